"""``crucible.Pod``: a machine rented as a lease held until stopped (docs/pods.md).

The same operations as ``crucible pod ...``: create, look up, stop, start, delete, read what
its command printed. Arguments are checked here with the server's own parser, so a typo
fails before anything is sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import quote

from pydantic import ValidationError

from crucible.errors import Error, InvalidRequestError, ResourcesUnsatisfiableError
from crucible.protocol.logs import LogLine, LogPage
from crucible.protocol.pods import DEFAULT_DISK, PodCreate, PodInfo, parse_pod, port_path
from crucible.sdk._checks import from_validation_error
from crucible.sdk._client import Client
from crucible.sdk._market_terms import market_terms

__all__ = ["Pod", "cannot_place"]

_FINAL = ("stopped", "preempted", "failed", "deleted")


class Pod:
    """A pod of your account. Get one with :meth:`create` or :meth:`from_name`."""

    def __init__(self, info: PodInfo, client: Client) -> None:
        self._info = info
        self._client = client

    def __repr__(self) -> str:
        return f"Pod({self._info.name!r}, id={self._info.id!r}, state={self._info.state!r})"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def state(self) -> str:
        """The state when last read; :meth:`info` reads it again."""
        return self._info.state

    @classmethod
    def create(
        cls,
        name: str,
        *,
        gpu: str | None = None,
        image: str | None = None,
        disk: str = DEFAULT_DISK,
        cpu: float | None = None,
        memory: str | None = None,
        command: str | None = None,
        env: Mapping[str, str] | None = None,
        ports: Sequence[str] = (),
        ssh_keys: Sequence[str] = (),
        volumes: Mapping[str, str] | None = None,
        tier: str = "on_demand",
        bid: float | None = None,
        max_price: float | None = None,
        region: str | None = None,
        min_reliability: float = 0.0,
        prefer: str = "cheapest",
        max_carbon_g_per_kwh: int | None = None,
        verified: bool = False,
        client: Client | None = None,
    ) -> Pod:
        """Create a pod and ask the market for it: ``gpu="H100:8"`` (None: a CPU pod),
        ``disk="100GiB"``, ``ports=["8888/http"]``, ``volumes={"/data": "my-volume"}``;
        ``tier="interruptible"`` with ``bid`` (and ``max_price``) in dollars per GPU-hour;
        ``region``, ``min_reliability`` (0..1), ``prefer``, ``max_carbon_g_per_kwh`` and
        ``verified`` choose hosts as they do for functions (docs/market.md).
        ``command`` runs with ``sh -c`` (None: the image's; the default image waits)."""
        try:
            req = PodCreate(
                name=name,
                gpu=gpu,
                cpu=cpu,
                memory=memory,
                image=image,
                disk=disk,
                command=command,
                env=dict(env or {}),
                ports=list(ports),
                ssh_keys=list(ssh_keys),
                volumes=dict(volumes or {}),
                market=market_terms(
                    tier,
                    bid,
                    max_price,
                    region=region,
                    min_reliability=min_reliability,
                    prefer=prefer,
                    max_carbon_g_per_kwh=max_carbon_g_per_kwh,
                    verified=verified,
                    where="Pod.create()",
                ),
            )
        except ValidationError as exc:
            raise from_validation_error(exc, "Pod.create()") from None
        parse_pod(req)  # the server's checks, before anything is sent
        client = client or Client.from_settings()
        data = client.post("/v1/pods", req.model_dump(mode="json"))
        return cls(PodInfo.model_validate(data), client)

    @classmethod
    def from_name(cls, name: str, *, client: Client | None = None) -> Pod:
        """Your pod called ``name`` (or with that id); NotFoundError if there is none."""
        client = client or Client.from_settings()
        return cls(PodInfo.model_validate(client.get(f"/v1/pods/{_ref(name)}")), client)

    @classmethod
    def list(cls, *, client: Client | None = None) -> list[Pod]:
        client = client or Client.from_settings()
        return [cls(PodInfo.model_validate(p), client) for p in client.get("/v1/pods")]

    def info(self) -> PodInfo:
        """Read the pod again (state, reason, host, cost so far)."""
        self._info = PodInfo.model_validate(self._client.get(f"/v1/pods/{self.id}"))
        return self._info

    def stop(self) -> PodInfo:
        """Stop it (SIGTERM, then SIGKILL after the grace); its disk stays on its host."""
        self._info = PodInfo.model_validate(self._client.post(f"/v1/pods/{self.id}/stop"))
        return self._info

    def start(self, *, timeout_s: float = 120.0) -> PodInfo:
        """Start it again: the market places it anew. A pod still stopping (``stop()`` returns
        at once) is waited for first, up to ``timeout_s``."""
        if self.info().state == "stopping":
            self.wait("stopped", *_FINAL, timeout_s=timeout_s)
        self._info = PodInfo.model_validate(self._client.post(f"/v1/pods/{self.id}/start"))
        return self._info

    def delete(self) -> None:
        """Stop it if it runs and remove it; its name is free again."""
        self._client.transport.delete(f"/v1/pods/{self.id}")

    def port_url(self, port: int) -> str:
        """The URL of published HTTP ``port`` (your token opens it; the same across
        stop/start): on the port's own host when the exchange has a ports domain, else
        under the exchange's URL."""
        own = self._info.port_urls.get(str(int(port)))
        if own is not None:
            return own
        return self._client.server_url.split(",")[0].rstrip("/") + port_path(self.id, port)

    def port_link(self, port: int) -> str:
        """A secret link to published HTTP ``port``: whoever has it opens the port (and only
        it) without a token, until the pod is deleted. Open it in a browser."""
        got = self._client.get(f"/v1/pods/{_ref(self.id)}/ports/{int(port)}/link")
        return str(got["url"])

    def wait(self, *states: str, timeout_s: float = 120.0) -> PodInfo:
        """Poll until the pod is in one of ``states`` (default: running or a final state).
        Raises at once when it is final, or pending where no host could ever run it
        (:class:`ResourcesUnsatisfiableError`); :class:`TimeoutError` after ``timeout_s``."""
        wanted = states or ("running", *_FINAL)
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info()
            if info.state in wanted:
                return info
            if info.state in _FINAL:
                # It will not get there by itself (a failed pod is not restarted): say so now
                # rather than at the end of the timeout.
                raise Error(
                    f"pod {self.name!r} is {info.state}, not {' or '.join(wanted)}"
                    + (f": {info.reason}" if info.reason else "")
                    + "; start it again with pod.start() (`crucible pod start`)"
                )
            if info.unplaceable:  # nor will it get there while the fleet stays as it is
                raise cannot_place(info)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"pod {self.name!r} is {info.state} after {timeout_s:g} s, not "
                    f"{' or '.join(wanted)}" + (f": {info.reason}" if info.reason else "")
                )
            time.sleep(0.25)

    def logs(self, *, after: int = 0, follow: bool = False) -> Iterator[LogLine]:
        """What the pod's command printed, oldest first; ``follow`` keeps reading new lines
        until the pod is stopped."""
        while True:
            page = LogPage.model_validate(
                self._client.get(f"/v1/pods/{self.id}/logs?after={after}")
            )
            yield from page.lines
            after = page.next_after
            if len(page.lines) >= 1000:
                continue
            if not follow or self.info().state in _FINAL:
                return
            time.sleep(0.5)


def cannot_place(info: PodInfo) -> ResourcesUnsatisfiableError:
    """The error for a pod that no host the exchange knows could ever run as asked."""
    return ResourcesUnsatisfiableError(
        f"pod {info.name!r} cannot be placed: {info.reason} It stays pending (at no cost) in "
        f"case such a host joins; delete it with `crucible pod rm {info.name}` (pod.delete())"
    )


def _ref(name: str) -> str:
    """A pod name or id as a path segment (quoted: a typo cannot reach another route)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequestError(f"{name!r} is not a pod name or id")
    return quote(name, safe="")
