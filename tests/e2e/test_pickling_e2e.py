"""Values that cannot be pickled: the call fails with SerializationError (a stable code)
naming the function and the value, never a bare TypeError from the pickler."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import app_pickling
import pytest

import crucible


def test_unpicklable_values_name_the_function(builder: Any, tmp_path: Path) -> None:
    with app_pickling.app.run(client=builder):
        with pytest.raises(crucible.SerializationError) as info:
            app_pickling.returns_lock.remote()
        message = str(info.value)
        assert "return value of returns_lock" in message
        assert "result['guard']" in message and "_thread.lock" in message
        assert "return plain data" in message and "\n" not in message
        call = app_pickling.returns_lock.spawn()
        with pytest.raises(crucible.SerializationError):
            call.get(timeout=60)
        assert builder.get_call(call.object_id).error.code == "serialization_error"

        items: list[Any] = []
        with pytest.raises(crucible.SerializationError, match="item 3 yielded by generator"):
            for item in app_pickling.yields_lock.remote_gen(3):
                items.append(item)
        assert items == [0, 1, 2]  # what came before the bad item still arrives

        with pytest.raises(crucible.RemoteError) as raised:
            app_pickling.raises_unpicklable.remote()
        assert raised.value.exc_type.endswith("LockedError")
        assert "the disk is full" in str(raised.value)
        assert "raised by raises_unpicklable cannot be pickled" in str(raised.value)

        # The SDK names an argument that cannot be pickled before sending anything.
        with pytest.raises(crucible.SerializationError, match="argument 'x' of echo"):
            app_pickling.echo.remote(threading.Lock())
        with pytest.raises(crucible.SerializationError, match="argument 'tag' of echo"):
            app_pickling.echo.spawn(1, tag=threading.Lock())  # type: ignore[arg-type]
        with pytest.raises(crucible.SerializationError, match="argument 'x' of echo"):
            list(app_pickling.echo.map([1, threading.Lock()]))
        assert app_pickling.echo.remote({"fine": [1, 2]}) == {"fine": [1, 2]}

        # Pickles that cannot be rebuilt on the other side say so, and where.
        with pytest.raises(crucible.SerializationError) as back:
            app_pickling.returns_container_only_class.remote(str(tmp_path))
        assert "return value of returns_container_only_class" in str(back.value)
        assert "cannot be unpickled here" in str(back.value)
        assert "only_in_container" in str(back.value)
        with pytest.raises(crucible.SerializationError, match="unpickled in the container"):
            app_pickling.echo.remote(LocalOnly())


class LocalOnly:
    """Defined in this test module, which containers cannot import."""
