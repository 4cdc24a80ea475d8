"""`crucible model deploy|list|show|stop|usage` and `crucible model adapter add`.

``model deploy`` writes a small app (one ``@crucible.asgi_app`` function that serves the
engine, worker/model_serving.py), deploys it like any app, and registers it as a model: its
containers autoscale, scale to zero, buy their GPUs on the market and are metered like any
deployment's. Weights come from a local path (uploaded with the deploy into the model's
volume, ``model-NAME``) or from a volume of yours (``volume:VOL/path``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import typer

from crucible.cli._output import console, fmt_time, fmt_usd, print_json, shown, table
from crucible.cli.resources import JSON, _client
from crucible.cli.run import import_app_file
from crucible.core.token_pricing import parse_price_per_million
from crucible.errors import InvalidRequestError, NotFoundError
from crucible.protocol.models import ENGINES, ModelInfo, ModelUsage, check_adapter_name
from crucible.protocol.transport import url_part
from crucible.sdk._checks import check_int, check_name, check_scaling
from crucible.sdk._client import Client
from crucible.sdk._volumes import Volume

__all__ = ["check_adapter_rank", "model_app_source", "register", "served_max_lora_rank"]

MODEL_MOUNT = "/model"  # the model's own volume: weights/ (when uploaded) and adapters/
SOURCE_MOUNT = "/weights"  # a volume the weights are read from (volume:VOL/path)
DEFAULT_MAX_LORA_RANK = 64  # the engines' default (inference/config.py EngineConfig)
MAX_LORA_RANK = 1024  # the highest --rank a fine-tune may ask for (protocol/fine_tunes.py)


def model_volume(name: str) -> str:
    return f"model-{name}"


def model_app_source(
    name: str,
    engine: str,
    weights: str,
    *,
    gpu: str | None,
    cpu: float,
    memory: str,
    min_containers: int,
    max_containers: int,
    concurrency: int,
    source_volume: str | None,
    context_length: int = 2048,
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
) -> str:
    """The app ``model deploy`` deploys, as Python source. Every value is written with
    ``repr``, so names and paths cannot change the code."""
    volumes = f"{{{MODEL_MOUNT!r}: model_volume"
    if source_volume:
        volumes += f", {SOURCE_MOUNT!r}: crucible.Volume.from_name({source_volume!r})"
    volumes += "}"
    return f'''"""The model deployment {name!r}, written by `crucible model deploy`."""

import crucible
from crucible.worker.model_serving import engine_app

app = crucible.App({name!r})
model_volume = crucible.Volume.from_name({model_volume(name)!r})


@app.function(
    gpu={gpu!r},
    cpu={cpu!r},
    memory={memory!r},
    min_containers={min_containers!r},
    max_containers={max_containers!r},
    timeout=600,
    volumes={volumes},
)
@crucible.concurrent(max_inputs={concurrency!r})
@crucible.asgi_app()
def serve():
    return engine_app(
        {engine!r}, {weights!r}, model_volume, name={name!r}, max_batch_size={concurrency!r},
        max_model_len={context_length!r}, max_lora_rank={max_lora_rank!r},
    )
'''


def check_local_weights(local: Path, engine: str) -> None:
    """Refuse, before anything is uploaded, weights the engine could not load: a folder
    saved with ``save_pretrained`` (config.json) for transformers and vllm, one ``.gguf``
    file for llama-cpp."""
    if engine == "llama-cpp":
        if local.is_dir():
            found = ", ".join(p.name for p in sorted(local.glob("*.gguf"))[:3])
            raise InvalidRequestError(
                f"--weights {local}: a folder; llama-cpp serves one .gguf file: give the file "
                + (f"({found})" if found else "(this folder holds none)")
            )
        try:
            with open(local, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise InvalidRequestError(
                f"--weights {local}: cannot be read ({exc.strerror})"
            ) from None
        if local.suffix != ".gguf" or magic != b"GGUF":
            raise InvalidRequestError(
                f"--weights {local}: not a .gguf file; llama-cpp serves a GGUF file "
                "(convert a Hugging Face model with llama.cpp's convert_hf_to_gguf.py)"
            )
        return
    if not (local / "config.json").is_file():
        raise InvalidRequestError(
            f"--weights {local}: {engine} serves a model folder with a config.json (as "
            "save_pretrained writes it); this is "
            + ("a folder without one" if local.is_dir() else "a file")
        )


def _weights(client: Client, weights: str, engine: str) -> tuple[str, str | None, Path | None]:
    """(path the containers read the weights at, the volume to mount for it or None, the
    local file or directory to upload into the model's volume or None), checked; nothing is
    uploaded yet (:func:`_upload_weights`)."""
    if weights.startswith("volume:"):
        vol, _, sub = weights.removeprefix("volume:").partition("/")
        if not vol:
            raise InvalidRequestError("--weights volume:NAME/path needs a volume name")
        Volume(vol, client).info()  # a clear 404 now rather than at the first container
        return f"{SOURCE_MOUNT}/{sub}".rstrip("/"), vol, None
    local = Path(weights).expanduser()
    if not local.exists():
        raise InvalidRequestError(
            f"--weights {weights}: no such file or directory; give a local path or volume:NAME/path"
        )
    check_local_weights(local, engine)
    if local.is_dir():
        return f"{MODEL_MOUNT}/weights", None, local
    return f"{MODEL_MOUNT}/weights/{local.name}", None, local


def _upload_weights(client: Client, name: str, local: Path) -> None:
    target = Volume.from_name(model_volume(name), create_if_missing=True, client=client)
    with target.batch_upload(force=True) as up:
        if local.is_dir():
            up.put_directory(local, "/weights")
        else:
            up.put_file(local, f"/weights/{local.name}")


def served_max_lora_rank(model: ModelInfo) -> int | None:
    """The highest adapter rank the model's engine serves (its ``--max-lora-rank``, recorded
    with the model), or None for a model whose engine is not one of ours (``custom``)."""
    return model.max_lora_rank if model.engine in ENGINES else None


def check_adapter_rank(model: ModelInfo, rank: int, what: str) -> None:
    """Refuse ``rank`` over what the model's engine serves, before anything is uploaded or
    trained (every request naming the adapter would be refused)."""
    limit = served_max_lora_rank(model)
    if limit is not None and rank > limit:
        raise InvalidRequestError(
            f"{what} has rank {rank}, over the largest rank model {model.name!r} serves "
            f"({limit}): use a rank of at most {limit}, or redeploy the model with "
            f"`crucible model deploy {model.name} ... --max-lora-rank {rank}`"
        )


def _peft_rank(config: bytes) -> int | None:
    """The rank ``r`` of a PEFT adapter_config.json, or None (the engine names the fault)."""
    try:
        rank = json.loads(config).get("r")
    except (ValueError, AttributeError):
        return None
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else None


def _current(client: Client, name: str) -> ModelInfo | None:
    """The model ``name`` as registered now, or None (a first deploy)."""
    try:
        return ModelInfo.model_validate(client.get(f"/v1/models/{url_part(name)}"))
    except NotFoundError:
        return None


def _price_text(info: ModelInfo) -> str:
    if not (info.price_input_micros or info.price_output_micros):
        return "container time only"
    return (
        f"${(info.price_input_micros or 0) / 1e6:g} in / ${(info.price_output_micros or 0) / 1e6:g}"
        " out per million tokens"
    )


def _changes(before: ModelInfo, after: ModelInfo) -> str:
    """What a redeploy changed in what callers see and pay."""
    changed = []
    if _price_text(before) != _price_text(after):
        changed.append(f"prices {_price_text(before)} -> {_price_text(after)}")
    if before.public != after.public:
        changed.append("now public" if after.public else "now private")
    if before.context_length != after.context_length:
        changed.append(f"context {before.context_length} -> {after.context_length} tokens")
    if not changed:
        return "redeployed: prices and visibility unchanged"
    return "redeployed; changed: " + "; ".join(changed)


def _own(name: str) -> str:
    """``name`` as a model of the caller's own; another account's (``OWNER/NAME``) is
    refused with where such a model is used (the request went to no route at all)."""
    if "/" in name:
        raise InvalidRequestError(
            f"{name!r} names another account's model (OWNER/NAME): `crucible model` commands "
            "act on your own models; call a public model through the OpenAI API "
            "(`GET /openai/v1/models` lists the ones you may use)"
        )
    return name


def _show(info: ModelInfo) -> None:
    price = _price_text(info)
    console.print(
        f"{shown(info.name)} ({info.id}): {info.state}, engine {shown(info.engine)}, "
        f"{'public' if info.public else 'private'}, {price}"
    )
    console.print(f"weights: {shown(info.weights)}; deployment {shown(info.deployment)}")
    if info.adapters:
        table(
            f"{info.name} adapters",
            ["adapter", "path", "source", "added (UTC)"],
            [(a.name, a.path, a.source, fmt_time(a.created_ms)) for a in info.adapters],
        )


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Model deployments: OpenAI-compatible endpoints, per token.")
    app.add_typer(model_app, name="model")
    adapter_app = typer.Typer(help="LoRA adapters served on top of a model.")
    model_app.add_typer(adapter_app, name="adapter")

    @model_app.command("deploy")
    def deploy(
        name: str = typer.Argument(..., help="The model's name (and its deployment's)."),
        weights: str = typer.Option(..., help="A local file or directory, or volume:VOL/path."),
        engine: str = typer.Option(..., help="vllm, transformers or llama-cpp."),
        gpu: str = typer.Option(None, help="A GPU request such as L4 or H100:2 (none: CPU)."),
        cpu: float = typer.Option(2.0, help="CPU cores per container."),
        memory: str = typer.Option("8GiB", help="Memory per container."),
        min_containers: int = typer.Option(0, help="Containers kept warm (0: scale to zero)."),
        max_containers: int = typer.Option(8, help="At most this many containers."),
        concurrency: int = typer.Option(32, help="Requests one container serves at once."),
        price_input: float = typer.Option(
            None, help="$ per million input tokens (a redeploy keeps the current price)."
        ),
        price_output: float = typer.Option(
            None, help="$ per million output tokens (a redeploy keeps the current price)."
        ),
        context_length: int = typer.Option(
            2048,
            min=16,
            help="The context window in tokens; longer requests are refused, and no request "
            "is charged for more tokens than it allows.",
        ),
        max_lora_rank: int = typer.Option(
            DEFAULT_MAX_LORA_RANK,
            help="The highest LoRA rank its adapters may have (adapters and fine-tunes of a "
            "higher --rank are refused); a higher one reserves more memory on vllm.",
        ),
        public: bool = typer.Option(
            None,
            "--public/--private",
            help="Other accounts may call it (and pay), or only you; a redeploy keeps the "
            "current setting (a new model: private).",
        ),
        as_json: bool = JSON,
    ) -> None:
        """Deploy a model: an OpenAI-compatible endpoint at {server}/openai/v1."""
        check_name("the model's name", name)
        if engine not in ENGINES:
            raise InvalidRequestError(
                f"--engine must be one of {', '.join(ENGINES)} (got {engine!r})"
            )
        check_int("--max-lora-rank", max_lora_rank, 1, MAX_LORA_RANK)
        prices = (
            parse_price_per_million("--price-input", price_input),
            parse_price_per_million("--price-output", price_output),
        )
        client = _client()
        try:
            check_scaling(
                min_containers, max_containers, names=("--min-containers", "--max-containers")
            )
            before = _current(client, name)
            path, source_volume, local = _weights(client, weights, engine)
            source = model_app_source(
                name,
                engine,
                path,
                gpu=gpu,
                cpu=cpu,
                memory=memory,
                min_containers=min_containers,
                max_containers=max_containers,
                concurrency=concurrency,
                source_volume=source_volume,
                context_length=context_length,
                max_lora_rank=max_lora_rank,
            )
            with tempfile.TemporaryDirectory(prefix="crucible-model-") as tmp:
                file = Path(tmp) / "crucible_model_app.py"
                file.write_text(source)
                # Importing runs the app's decorators, which check --gpu, --memory, --cpu and
                # --concurrency: a bad one is refused before the weights are uploaded.
                module = import_app_file(file)
                if local is not None:
                    _upload_weights(client, name, local)
                else:  # the model's volume holds its adapters even when weights come from one
                    Volume.from_name(model_volume(name), create_if_missing=True, client=client)
                module.app.deploy(name=name, client=client)
            body: dict[str, Any] = {
                "name": name,
                "deployment": name,
                "function": "serve",
                "engine": engine,
                "weights": weights,
                "context_length": context_length,
                "max_lora_rank": max_lora_rank,
            }
            # Left out, the model's current prices and visibility are kept (a new model:
            # private, container time only).
            if public is not None:
                body["public"] = public
            if price_input is not None:
                body["price_input_micros"] = prices[0]
            if price_output is not None:
                body["price_output_micros"] = prices[1]
            info = ModelInfo.model_validate(client.post("/v1/models", body))
        finally:
            client.close()
        if as_json:
            print_json(info.model_dump())
            return
        _show(info)
        if before is not None:
            console.print(_changes(before, info))
        console.print(
            f"call it with any OpenAI client: base_url={shown(client.server_url)}/openai/v1, "
            f"api_key=<your crucible token>, model={shown(repr(info.name))}"
        )

    @model_app.command("list")
    def list_(as_json: bool = JSON) -> None:
        """Your models."""
        infos = [ModelInfo.model_validate(m) for m in _client().get("/v1/models")]
        if as_json:
            print_json([m.model_dump() for m in infos])
            return
        table(
            "Models",
            ["name", "state", "engine", "adapters", "public", "$/M in", "$/M out"],
            [
                (
                    m.name,
                    m.state,
                    m.engine,
                    len(m.adapters),
                    "yes" if m.public else "no",
                    fmt_usd(m.price_input_micros),
                    fmt_usd(m.price_output_micros),
                )
                for m in infos
            ],
        )

    @model_app.command("show")
    def show(name: str, as_json: bool = JSON) -> None:
        """A model: engine, weights, prices, adapters."""
        info = ModelInfo.model_validate(_client().get(f"/v1/models/{url_part(_own(name))}"))
        print_json(info.model_dump()) if as_json else _show(info)

    @model_app.command("stop")
    def stop(name: str, as_json: bool = JSON) -> None:
        """Stop serving (containers stop; adapters and usage are kept)."""
        info = ModelInfo.model_validate(_client().post(f"/v1/models/{url_part(_own(name))}/stop"))
        print_json(info.model_dump()) if as_json else _show(info)

    @model_app.command("usage")
    def usage(name: str, as_json: bool = JSON) -> None:
        """Tokens per day, caller and adapter, and what they were charged."""
        report = ModelUsage.model_validate(
            _client().get(f"/v1/models/{url_part(_own(name))}/usage")
        )
        if as_json:
            print_json(report.model_dump())
            return
        table(
            f"{report.model} usage",
            ["day (UTC)", "caller", "adapter", "requests", "input", "output", "charged"],
            [
                (
                    u.day,
                    u.caller,
                    u.adapter or "-",
                    u.requests,
                    u.input_tokens,
                    u.output_tokens,
                    fmt_usd(u.cost_micros),
                )
                for u in report.lines
            ],
        )
        console.print(
            f"Total: {report.requests} requests, {report.input_tokens} input and "
            f"{report.output_tokens} output tokens; charged per token "
            f"[bold]{fmt_usd(report.cost_micros)}[/]; container time "
            f"{fmt_usd(report.container_cost_micros)}"
        )

    @adapter_app.command("add")
    def adapter_add(
        name: str = typer.Argument(..., help="The model."),
        adapter: str = typer.Argument(..., help="The adapter's name (call it as NAME:ADAPTER)."),
        path: Path = typer.Option(
            None,
            help="A local PEFT adapter directory to upload (or, for a llama-cpp model, "
            "a GGUF LoRA file).",
        ),
        volume: str = typer.Option(None, help="VOL/path: a PEFT adapter in a volume of yours."),
        container_path: str = typer.Option(
            None, help="A path the model's containers already see (nothing is copied)."
        ),
        as_json: bool = JSON,
    ) -> None:
        """Add a LoRA adapter; it serves at once (containers load it on first use)."""
        check_adapter_name("the adapter's name", adapter)
        given = [x for x in (path, volume, container_path) if x is not None]
        if len(given) != 1:
            raise InvalidRequestError(
                "give exactly one of --path DIR, --volume VOL/path or --container-path PATH"
            )
        if path is not None:
            _check_adapter_dir(path)
        client = _client()
        try:
            model = ModelInfo.model_validate(client.get(f"/v1/models/{url_part(_own(name))}"))
            rank = _adapter_rank(client, path, volume)
            if rank is not None:
                check_adapter_rank(model, rank, f"adapter {adapter!r}")
            if container_path is not None:
                where, source = container_path, container_path
            else:
                where = f"{MODEL_MOUNT}/adapters/{adapter}"
                source = str(path) if path is not None else f"volume:{volume}"
                _upload_adapter(client, name, adapter, path, volume)
            info = ModelInfo.model_validate(
                client.post(
                    f"/v1/models/{url_part(name)}/adapters",
                    {"name": adapter, "path": where, "source": source, "rank": rank},
                )
            )
        finally:
            client.close()
        if as_json:
            print_json(info.model_dump())
            return
        label = shown(f"{name}:{adapter}")
        console.print(f"adapter {shown(adapter)} added: call it as model={label}")


def _check_adapter_dir(path: Path) -> None:
    """A local PEFT LoRA directory has its config and its weights; anything else (a model
    directory, a checkpoint) is refused here rather than by every container that loads it.
    A ``.gguf`` file (a GGUF LoRA, which the llama-cpp engine serves) passes; the engine
    checks its contents against the base."""
    if path.is_file() and path.suffix == ".gguf":
        return
    if not path.is_dir():
        raise InvalidRequestError(
            f"--path {path}: not a directory; give a PEFT adapter directory "
            "(adapter_config.json and adapter_model.safetensors), or a GGUF LoRA file "
            "(.gguf) for a llama-cpp model"
        )
    for needed in ("adapter_config.json", "adapter_model.safetensors"):
        if not (path / needed).is_file():
            raise InvalidRequestError(
                f"--path {path}: no {needed}, so it is not a PEFT LoRA adapter directory "
                "(save one with peft's save_pretrained, or use the adapter a "
                "`crucible fine-tune` job wrote)"
            )


def _adapter_rank(client: Client, path: Path | None, volume: str | None) -> int | None:
    """The rank of a PEFT adapter given by ``--path`` or ``--volume``, read from its
    adapter_config.json; None where it cannot be read here (a GGUF file, a container path:
    the engine checks those when it loads them)."""
    if path is not None:
        config = path / "adapter_config.json"
        return _peft_rank(config.read_bytes()) if config.is_file() else None
    if volume is None:
        return None
    vol, _, sub = volume.partition("/")
    try:
        raw = b"".join(Volume(vol, client).read_file(f"/{sub.strip('/')}/adapter_config.json"))
    except FileNotFoundError:
        return None
    return _peft_rank(raw)


def _upload_adapter(
    client: Client, name: str, adapter: str, path: Path | None, volume: str | None
) -> None:
    """Put the adapter's files under adapters/ADAPTER in the model's volume."""
    client.get(f"/v1/models/{url_part(name)}")  # the model exists (a clear 404 before uploading)
    target = Volume.from_name(model_volume(name), create_if_missing=True, client=client)
    with target.batch_upload(force=True) as up:
        if path is not None and path.is_file():  # a GGUF LoRA: its directory holds it alone
            up.put_file(path, f"/adapters/{adapter}/{path.name}")
            return
        if path is not None:
            up.put_directory(path, f"/adapters/{adapter}")
            return
        vol, _, sub = (volume or "").partition("/")
        source = Volume(vol, client)
        sub = "/" + sub.strip("/")
        with tempfile.TemporaryDirectory(prefix="crucible-adapter-") as tmp:
            for entry in source.listdir(sub, recursive=True):
                if entry.type != "file":
                    continue
                local = Path(tmp) / entry.path.lstrip("/")
                local.parent.mkdir(parents=True, exist_ok=True)
                with local.open("wb") as out:
                    for chunk in source.read_file(entry.path):
                        out.write(chunk)
                rel = entry.path[len(sub) :].lstrip("/") if sub != "/" else entry.path.lstrip("/")
                up.put_file(local, f"/adapters/{adapter}/{rel}")
