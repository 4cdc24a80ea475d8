"""`crucible fine-tune create|list|show|logs|cancel`.

``fine-tune create`` checks the training file here (nothing is started or charged for bad
data), uploads it into the model's volume, deploys a small trainer app (one function that runs
``python -m crucible.inference.finetune``, worker/fine_tuning.py) with the model's volume
mounted, spawns one call of it on the market (GPU or CPU) and records the job. The adapter is
written to ``adapters/ADAPTER`` in the model's volume and registered on the model when the
call succeeds: it serves at once as ``MODEL:ADAPTER``.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from pathlib import Path

import typer
from pydantic import ValidationError

from crucible.cli._ids import resolve_id
from crucible.cli._output import clean, console, fmt_time, print_json, shown, table
from crucible.cli.models import MODEL_MOUNT, SOURCE_MOUNT, check_adapter_rank, model_volume
from crucible.cli.resources import JSON, _client
from crucible.cli.run import import_app_file
from crucible.errors import InvalidRequestError
from crucible.protocol.fine_tunes import FINE_TUNE_METHODS, FineTuneCreate, FineTuneInfo
from crucible.protocol.models import ModelInfo, check_adapter_name, check_not_base
from crucible.protocol.transport import url_part
from crucible.sdk._checks import check_int, check_number, from_validation_error
from crucible.sdk._client import Client
from crucible.sdk._functions import Function
from crucible.sdk._volumes import Volume

__all__ = ["register", "trainer_app_source"]

FT_ID = typer.Argument(..., help="The fine-tune's id or short id (`crucible fine-tune list`).")
TRAINABLE_ENGINES = ("transformers", "vllm")  # a base model directory the trainer can load

# A linear layer's name in a model (q_proj, model.layers.0.mlp.up_proj).
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")


def trainer_app_source(
    app_name: str,
    model: str,
    *,
    gpu: str | None,
    cpu: float,
    memory: str,
    timeout: int,
    source_volume: str | None,
) -> str:
    """The trainer app, as Python source; every value is written with ``repr``."""
    volumes = f"{{{MODEL_MOUNT!r}: model_volume"
    if source_volume:
        volumes += f", {SOURCE_MOUNT!r}: crucible.Volume.from_name({source_volume!r})"
    volumes += "}"
    return f'''"""Fine-tunes of the model {model!r}, written by `crucible fine-tune create`."""

import crucible

app = crucible.App({app_name!r})
model_volume = crucible.Volume.from_name({model_volume(model)!r})


@app.function(gpu={gpu!r}, cpu={cpu!r}, memory={memory!r}, timeout={timeout!r},
              volumes={volumes})
def train(args):
    from crucible.worker.fine_tuning import run_trainer

    return run_trainer(args, model_volume)
'''


def base_weights(weights: str) -> tuple[str, str | None]:
    """(the base model directory as the job's container sees it, a volume to mount or None),
    from the model's ``weights`` as it was deployed (see cli/models.py)."""
    if weights.startswith("volume:"):
        vol, _, sub = weights.removeprefix("volume:").partition("/")
        return f"{SOURCE_MOUNT}/{sub}".rstrip("/"), vol
    return f"{MODEL_MOUNT}/weights", None


def check_data(data: Path) -> int:
    """The number of examples in ``data``; InvalidRequestError naming the problem."""
    from crucible.inference.finetune_data import DataError, check_records

    try:
        return check_records(data)
    except DataError as exc:
        raise InvalidRequestError(
            f'--data: {exc}. Each line is {{"messages": [..., {{"role": "assistant", '
            '"content": ...}]} or {"prompt": ..., "completion": ...}'
        ) from None


def _show(job: FineTuneInfo) -> None:
    console.print(
        f"fine-tune {shown(job.id)}: {job.state}; model {shown(job.model)}, adapter "
        f"{shown(job.adapter)} ({'registered' if job.registered else 'not registered yet'})"
    )
    console.print(
        f"{job.method}, rank {job.rank}, {job.epochs} epochs, lr {job.lr:g}, "
        f"{job.examples} examples from {shown(job.data)}; call {job.call_id}; "
        f"created {fmt_time(job.created_ms)}"
    )
    if job.steps:
        first, last = job.steps[0], job.steps[-1]
        console.print(
            f"loss {first.loss:.4f} (step {first.step}) -> {last.loss:.4f} (step {last.step}, "
            f"epoch {last.epoch}); {len(job.checkpoints)} checkpoints"
        )
    if job.error:
        console.print(f"[red]error:[/] {shown(job.error)}")
    if job.registered:
        console.print(f"call it as model={shown(repr(f'{job.model}:{job.adapter}'))}")


def register(app: typer.Typer) -> None:
    ft_app = typer.Typer(help="Fine-tuning: train a LoRA adapter for a model, on the market.")
    app.add_typer(ft_app, name="fine-tune")

    @ft_app.command("create")
    def create(
        base: str = typer.Option(..., help="The model to fine-tune (crucible model list)."),
        data: Path = typer.Option(..., help="Training data: a .jsonl file."),
        method: str = typer.Option("lora", help="Only lora."),
        rank: int = typer.Option(16, help="LoRA rank."),
        epochs: int = typer.Option(3, help="Passes over the data."),
        lr: float = typer.Option(2e-4, help="Learning rate."),
        adapter: str = typer.Option(None, help="The adapter's name (default ft-XXXXXX)."),
        batch_size: int = typer.Option(4, help="Examples per optimizer step."),
        checkpoint_every: int = typer.Option(0, help="Checkpoint every N steps (0: per epoch)."),
        target_modules: str = typer.Option(
            "q_proj,k_proj,v_proj,o_proj", help="Comma-separated linear layers to adapt."
        ),
        gpu: str = typer.Option(None, help="A GPU request such as L4 (none: CPU)."),
        cpu: float = typer.Option(2.0, help="CPU cores for the job."),
        memory: str = typer.Option("8GiB", help="Memory for the job."),
        timeout: int = typer.Option(3600, help="Seconds the job may run."),
        as_json: bool = JSON,
    ) -> None:
        """Train a LoRA adapter on --data; it serves as BASE:ADAPTER when the job succeeds."""
        if method not in FINE_TUNE_METHODS:
            raise InvalidRequestError(f"--method {method!r} is not supported: use --method lora")
        for label, value in (("--rank", rank), ("--epochs", epochs), ("--batch-size", batch_size)):
            if value < 1:
                raise InvalidRequestError(f"{label} must be at least 1 (got {value})")
        if not 0 < lr <= 1:
            raise InvalidRequestError(f"--lr must be in (0, 1] (got {lr})")
        check_int("--batch-size", batch_size, 1, 65_536)
        check_int("--checkpoint-every", checkpoint_every, 0, 1_000_000_000)
        # The trainer's own options, checked as @app.function checks them (before the data is
        # uploaded: nan became a bare name in the generated app and failed there).
        check_number("--cpu", cpu, 0, 1024, lo_open=True, unit="cores")
        check_int("--timeout", timeout, 1, 7 * 86400)
        modules = [m.strip() for m in target_modules.split(",")]
        if not all(_MODULE.match(m) for m in modules):
            raise InvalidRequestError(
                f"--target-modules {target_modules!r}: give comma-separated layer names, "
                "such as q_proj,v_proj"
            )
        name = adapter or f"ft-{uuid.uuid4().hex[:6]}"
        check_adapter_name("--adapter", name)
        examples = check_data(data)  # before anything is started or charged
        body = {
            "method": "lora",
            "rank": rank,
            "epochs": epochs,
            "lr": lr,
            "examples": examples,
            "data": str(data),
        }
        try:  # the server's bounds, checked before the job is started
            FineTuneCreate.model_validate({**body, "model": base, "adapter": name, "call_id": "-"})
        except ValidationError as exc:
            raise from_validation_error(
                exc, "crucible fine-tune create", {"batch_size": "--batch-size"}
            ) from None
        client = _client()
        try:
            model = ModelInfo.model_validate(client.get(f"/v1/models/{url_part(base)}"))
            if model.engine not in TRAINABLE_ENGINES:
                raise InvalidRequestError(
                    f"model {base!r} runs the {model.engine} engine: fine-tuning needs a "
                    "transformers (or vllm) model directory as its base"
                )
            check_adapter_rank(model, rank, "the adapter to train (--rank)")
            check_not_base(model.name, name)
            trainer = [
                "--method",
                "lora",
                "--rank",
                str(rank),
                "--epochs",
                str(epochs),
                "--lr",
                repr(lr),
                "--batch-size",
                str(batch_size),
                "--checkpoint-every",
                str(checkpoint_every),
                "--target-modules",
                ",".join(modules),
            ]
            job = _start(
                client,
                model,
                data,
                name,
                trainer,
                body,
                gpu=gpu,
                cpu=cpu,
                memory=memory,
                timeout=timeout,
            )
        finally:
            client.close()
        if as_json:
            print_json(job.model_dump())
            return
        _show(job)
        console.print(
            f"follow it with `crucible fine-tune logs {job.id}`; "
            f"stop it with `crucible fine-tune cancel {job.id}`"
        )

    @ft_app.command("list")
    def list_(as_json: bool = JSON) -> None:
        """Your fine-tunes, newest first."""
        jobs = [FineTuneInfo.model_validate(j) for j in _client().get("/v1/fine-tunes")]
        if as_json:
            print_json([j.model_dump() for j in jobs])
            return
        table(
            "Fine-tunes",
            ["id", "model", "adapter", "state", "steps", "loss", "created (UTC)"],
            [
                (
                    j.id,
                    j.model,
                    j.adapter,
                    j.state,
                    len(j.steps),
                    f"{j.steps[-1].loss:.4f}" if j.steps else "-",
                    fmt_time(j.created_ms),
                )
                for j in jobs
            ],
        )

    @ft_app.command("show")
    def show(ft_id: str = FT_ID, as_json: bool = JSON) -> None:
        """A fine-tune: its state, its loss so far, its adapter."""
        client = _client()
        ft_id = resolve_id(client, ft_id, "ft")
        job = FineTuneInfo.model_validate(client.get(f"/v1/fine-tunes/{url_part(ft_id)}"))
        if as_json:
            print_json(job.model_dump())
            return
        _show(job)
        if job.steps:
            table(
                "loss",
                ["step", "epoch", "loss"],
                [(s.step, s.epoch, f"{s.loss:.6f}") for s in job.steps[-20:]],
            )

    @ft_app.command("logs")
    def logs(ft_id: str = FT_ID) -> None:
        """The job's log: the trainer's JSON lines (one per step), oldest first."""
        client = _client()
        ft_id = resolve_id(client, ft_id, "ft")
        job = FineTuneInfo.model_validate(client.get(f"/v1/fine-tunes/{url_part(ft_id)}"))
        after = 0
        while True:
            page = client.get(f"/v1/apps/{job.app_id}/logs?after={after}&call_id={job.call_id}")
            for line in page["lines"]:
                typer.echo(clean(line["line"]))
            after = page["next_after"]
            if len(page["lines"]) < 1000:
                return

    @ft_app.command("cancel")
    def cancel(ft_id: str = FT_ID, as_json: bool = JSON) -> None:
        """Stop a running fine-tune (checkpoints already saved stay in the model's volume)."""
        client = _client()
        ft_id = resolve_id(client, ft_id, "ft")
        job = FineTuneInfo.model_validate(client.post(f"/v1/fine-tunes/{url_part(ft_id)}/cancel"))
        print_json(job.model_dump()) if as_json else _show(job)


def _start(
    client: Client,
    model: ModelInfo,
    data: Path,
    adapter: str,
    trainer: list[str],
    body: dict[str, object],
    *,
    gpu: str | None,
    cpu: float,
    memory: str,
    timeout: int,
) -> FineTuneInfo:
    """Upload the data, deploy the trainer app, spawn its call, record the job."""
    job_dir = f"fine-tunes/{uuid.uuid4().hex[:12]}"
    volume = Volume.from_name(model_volume(model.name), create_if_missing=True, client=client)
    with volume.batch_upload(force=True) as up:
        up.put_file(data, f"/{job_dir}/train.jsonl")
    base, source_volume = base_weights(model.weights)
    app_name = f"{model.name}-fine-tune"
    source = trainer_app_source(
        app_name,
        model.name,
        gpu=gpu,
        cpu=cpu,
        memory=memory,
        timeout=timeout,
        source_volume=source_volume,
    )
    with tempfile.TemporaryDirectory(prefix="crucible-fine-tune-") as tmp:
        file = Path(tmp) / "crucible_fine_tune_app.py"
        file.write_text(source)
        module = import_app_file(file)
        module.app.deploy(name=app_name, client=client)
    args = [
        "--base",
        base,
        "--data",
        f"{MODEL_MOUNT}/{job_dir}/train.jsonl",
        "--out",
        f"{MODEL_MOUNT}/adapters/{adapter}",
        *trainer,
    ]
    call = Function.from_name(app_name, "train", client=client).spawn(args)
    record = {**body, "model": model.name, "adapter": adapter, "call_id": call.object_id}
    return FineTuneInfo.model_validate(client.post("/v1/fine-tunes", record))
