"""`rlhf ...`: the command line. Thin: parse, call the library, print.

Heavy imports (torch, transformers, datasets) happen inside the commands so `rlhf --help` is
instant. A `WorkbenchError` becomes one message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.exceptions import TyperException

from rlhf.errors import WorkbenchError

app = typer.Typer(
    help="RLHF Workbench: preferences -> reward model -> PPO, with the store in the data home (RLHF_HOME).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Prepare and list models.", no_args_is_help=True)
prompts_app = typer.Typer(help="Import prompts.", no_args_is_help=True)
annotators_app = typer.Typer(help="Manage annotators and their login tokens.", no_args_is_help=True)
preferences_app = typer.Typer(help="Import existing preference data.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(prompts_app, name="prompts")
app.add_typer(annotators_app, name="annotators")
app.add_typer(preferences_app, name="preferences")
inspect_app = typer.Typer(help="Inspect training runs.", no_args_is_help=True)
app.add_typer(inspect_app, name="inspect")
pipeline_app = typer.Typer(help="Run whole RLHF rounds from one YAML.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
human_eval_app = typer.Typer(
    help="Human evaluation of a PPO run: people judge its held-out responses against the reference's.",
    no_args_is_help=True,
)
app.add_typer(human_eval_app, name="human-eval")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DEMO_PROMPTS = Path(__file__).parent / "data" / "demo_prompts.jsonl"


def _store() -> Any:
    from rlhf.store import Store

    store = Store()
    store.require_ready()
    return store


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


# -- set-up ----------------------------------------------------------------------------------


@app.command()
def init() -> None:
    """Create the data home and the store (or upgrade its schema). Safe to re-run."""
    from rlhf.home import ensure_home
    from rlhf.store import Store

    home = ensure_home()
    store = Store()
    version = store.init()
    out.print(f"data home: {home}\nstore:     {store.display_url} (schema v{version})")


@app.command()
def status() -> None:
    """Counts of prompts, completions, comparisons and labels, per state."""
    store = _store()
    counts = store.counts()
    out.print(_table(f"store {store.display_url}", ["what", "count"], [[k, v] for k, v in counts.items()]))


# -- models ----------------------------------------------------------------------------------


@models_app.command("list")
def models_list() -> None:
    """Registry models and every model folder in the data home."""
    from rlhf.models import list_models

    rows = [[m.name, "yes" if m.prepared else "no", f"{m.size_mb:.0f} MB", m.source] for m in list_models()]
    out.print(_table("models", ["name", "prepared", "size", "source"], rows))


@models_app.command("prepare")
def models_prepare(
    name: str = typer.Argument("default", help="Registry name, local folder or hub id."),
    force: bool = typer.Option(False, "--force", help="Rebuild a registry model even if prepared."),
) -> None:
    """Make a model ready to load (converts the embedded GGUF once; downloads hub ids)."""
    from rlhf.models import REGISTRY, canonical_name, prepare_registry_model, resolve_model

    start = time.perf_counter()
    if canonical_name(name) in REGISTRY:
        path = prepare_registry_model(name, force=force)
    else:
        path = resolve_model(name)
    out.print(f"{name}: ready at {path} ({time.perf_counter() - start:.1f} s)")


# -- prompts, candidates, annotators, preferences --------------------------------------------


def _print_import(kind: str, r: Any) -> None:
    verb = "would add" if r.dry_run else "added"
    out.print(f"{kind}: read {r.read}, {verb} {r.added}, already present {r.already_present}")


@prompts_app.command("import")
def prompts_import(
    path: Path = typer.Argument(..., help="JSONL, JSON, CSV, or a `datasets` save_to_disk folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only; store nothing."),
    source: str | None = typer.Option(None, help="Provenance recorded on each prompt (default: file name)."),
) -> None:
    """Import prompts (all or nothing: a bad row imports nothing and names file, line and field)."""
    from rlhf.io import import_prompts

    _print_import("prompts", import_prompts(_store(), path, dry_run=dry_run, source=source))


@preferences_app.command("import")
def preferences_import(
    path: Path = typer.Argument(..., help="TRL prompt/chosen/rejected or Anthropic HH chosen/rejected file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only; store nothing."),
) -> None:
    """Import preference pairs as completed comparisons labelled by the `imported` annotator."""
    from rlhf.io import import_preferences

    _print_import("preference pairs", import_preferences(_store(), path, dry_run=dry_run))


@app.command()
def generate(
    model: str = typer.Option("default", help="Policy: registry name, local folder or hub id."),
    limit: int | None = typer.Option(None, help="At most this many prompts (default: all without candidates)."),
    category: str | None = typer.Option(None, help="Only prompts of this category."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding (needs --num-candidates 1)."),
    temperature: float = typer.Option(0.8, help="Sampling temperature."),
    top_k: int = typer.Option(50, help="Top-k sampling (0 disables)."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass (1 disables)."),
    max_new_tokens: int = typer.Option(128, help="Longest response in tokens."),
    num_candidates: int = typer.Option(2, "--num-candidates", "-k", help="Responses per prompt."),
    seed: int = typer.Option(0, help="Seed (same prompts, batch size and seed reproduce the samples)."),
    batch_size: int = typer.Option(8, help="Prompts per batch."),
    system_prompt: list[str] = typer.Option(
        [],
        "--system-prompt",
        help="Repeatable: candidate k is generated under the k-th (mod n) system prompt ('' = the model's "
        "default); more varied candidates, more decisive pairs. Labels and training see the user's prompt only.",
    ),
    overlap: int | None = typer.Option(None, help="Labels each new comparison needs (default: store setting)."),
    round: int = typer.Option(0, help="Labeling round recorded on the comparisons."),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
) -> None:
    """Generate K candidate responses per prompt and store the pairs as comparisons (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlhf.generate import GenerationSettings, generate_candidates

    settings = GenerationSettings(
        do_sample=not greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        num_candidates=num_candidates,
        seed=seed,
        batch_size=batch_size,
        system_prompts=list(system_prompt),
    ).validate()
    store = _store()
    with Progress(
        TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    ) as bar:
        task = bar.add_task("gen", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        r = generate_candidates(
            store,
            model,
            settings,
            limit=limit,
            category=category,
            required_labels=overlap,
            round=round,
            dtype=dtype,
            device=device,
            progress=progress,
        )
    if r.prompts == 0:
        out.print("nothing to do: every selected prompt already has candidates from this model")
        return
    out.print(
        f"{r.prompts} prompts -> {r.completions} completions, {r.comparisons} comparisons "
        f"({r.identical_pairs_skipped} identical pairs skipped); {r.new_tokens} tokens at {r.tokens_per_s:.0f} tokens/s"
    )


@annotators_app.command("add")
def annotators_add(
    name: str = typer.Argument(..., help="Unique display name."),
    admin: bool = typer.Option(False, "--admin", help="Give the admin role (admin pages)."),
) -> None:
    """Add an annotator and print the login token (shown once; only its hash is stored)."""
    a, token = _store().add_annotator(name, role="admin" if admin else "annotator")
    out.print(f"added {a.role} {a.name!r} (id {a.id})\nlogin token (shown once): {token}")


@annotators_app.command("list")
def annotators_list() -> None:
    """Annotators, roles and whether they can log in."""
    rows = [[a.id, a.name, a.role, "yes" if a.active else "no"] for a in _store().list_annotators()]
    out.print(_table("annotators", ["id", "name", "role", "active"], rows))


def _annotator_id(store: Any, name: str) -> int:
    for a in store.list_annotators():
        if a.name == name:
            return a.id
    raise WorkbenchError(f"no annotator named {name!r}; see `rlhf annotators list`")


@annotators_app.command("deactivate")
def annotators_deactivate(name: str) -> None:
    """Revoke an annotator's access (labels stay)."""
    store = _store()
    store.set_annotator_active(_annotator_id(store, name), False)
    out.print(f"deactivated {name!r}")


@annotators_app.command("rotate-token")
def annotators_rotate(name: str) -> None:
    """Issue a new login token; the old one stops working."""
    store = _store()
    out.print(f"new login token for {name!r} (shown once): {store.rotate_token(_annotator_id(store, name))}")


# -- export ----------------------------------------------------------------------------------


@app.command()
def export(
    out_dir: Path | None = typer.Argument(None, help="Output folder (default: <data home>/exports/<UTC time>)."),
    test_fraction: float = typer.Option(0.1, help="Share of prompts held out (split by prompt)."),
    seed: int = typer.Option(0, help="Seed of the prompt split."),
    ties: str = typer.Option("drop", help="drop | keep (as margin-0 pairs flagged is_tie)."),
    both_bad: str = typer.Option("drop", help="drop | keep (flagged is_both_bad)."),
    disagreement: str = typer.Option("majority", help="majority | unanimous."),
    min_labels: int = typer.Option(1, help="Drop comparisons with fewer submitted labels."),
    margin: str = typer.Option("strength", help="strength (Llama 2 style margin column) | none."),
    fmt: str = typer.Option("auto", "--format", help="auto | conversational | text."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Export labelled comparisons as a TRL preference dataset (datasets folder + manifest.json)."""
    from datetime import datetime, timezone

    from rlhf.home import ensure_home
    from rlhf.io import ExportOptions, export_preferences

    if out_dir is None:
        out_dir = ensure_home() / "exports" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    options = ExportOptions(
        test_fraction=test_fraction,
        seed=seed,
        ties=ties,
        both_bad=both_bad,
        disagreement=disagreement,
        min_labels=min_labels,
        margin=margin,
        format=fmt,
    )
    r = export_preferences(_store(), out_dir, options, force=force)
    c = r.counts
    out.print(f"exported to {r.path}: train {c['exported_train']}, test {c['exported_test']}")
    out.print(f"dropped: {json.dumps(c['dropped'])}")


# -- reward model ----------------------------------------------------------------------------


@app.command("train-reward")
def train_reward_cmd(
    export_dir: Path | None = typer.Argument(
        None, help="Export folder (`rlhf export`); omitted: export the store now."
    ),
    model: str | None = typer.Option(None, help="Base model (the policy's); default: the config's, else `default`."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML: our options + a `trl:` section of RewardConfig fields."
    ),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimizer steps."),
    lora: bool | None = typer.Option(
        None, "--lora/--full", help="Fine-tune through TRL's RewardTrainer: LoRA adapters + score head, or all weights."
    ),
    frozen: bool | None = typer.Option(
        None,
        "--frozen/--finetune",
        help="Frozen backbone + trained score head (the default: fast, learns from a few hundred labels), "
        "or fine-tune through TRL's RewardTrainer.",
    ),
    sets: list[str] | None = typer.Option(None, "--set", help="Override any option or RewardConfig field: KEY=VALUE."),
) -> None:
    """Train a reward model (frozen backbone + head by default; TRL's RewardTrainer with --finetune or
    --lora/--full); writes runs/reward/<id>/ and prints a summary with the held-out accuracy, its
    95% interval and whether the model learned."""
    from rlhf.configs import build_options, parse_sets, read_yaml
    from rlhf.reward import RewardOptions, reward_config_fields, train_reward
    from rlhf.runs import is_main_process, read_json

    overrides = parse_sets(sets)
    if model is not None:
        overrides["model"] = model
    if lora is not None:
        overrides["lora"] = lora
        overrides.setdefault("freeze_backbone", False)
    if frozen is not None:
        overrides["freeze_backbone"] = frozen
    options, trl = build_options(
        RewardOptions, read_yaml(config) if config else {}, overrides, reward_config_fields(), "reward config"
    )
    if export_dir is None:
        from datetime import datetime, timezone

        from rlhf.home import ensure_home
        from rlhf.io import export_preferences

        export_dir = ensure_home() / "exports" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        export_preferences(_store(), export_dir)
        out.print(f"exported the store to {export_dir}")
    run_dir = train_reward(export_dir, options, trl, max_steps=max_steps)
    if not is_main_process():
        return  # one report per launch
    s = read_json(run_dir / "summary.json")
    out.print(f"reward run: {run_dir}")
    out.print(
        f"train pairs {s['train_pairs']} (dropped as too long: {s['dropped_too_long']}), steps {s['global_step']}, "
        f"{s['pairs_per_second']:.2f} pairs/s ({s.get('mode', 'full')})"
    )
    _print_learning(s)


def _print_learning(s: dict[str, Any]) -> None:
    """The held-out accuracy with n and its interval, the untrained accuracy, and the verdict: loud
    (red, on stderr too) when the model did not measurably learn."""
    from rlhf.stats import fmt_proportion

    before = s.get("eval_accuracy_before")
    out.print(
        f"held-out accuracy {fmt_proportion(s.get('eval_accuracy_interval'))}, untrained "
        f"{'n/a' if before is None else f'{before:.2f}'}"
    )
    verdict = s.get("learning") or {}
    if verdict.get("status") == "learned":
        out.print(f"[green]learned[/green]: {verdict['message']}")
    elif verdict:
        err.print(f"[bold red]WARNING: {verdict['message']}[/bold red]")


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


@inspect_app.command("reward")
def inspect_reward(run: str = typer.Argument("latest", help="Run folder or id under runs/reward/ (`latest`).")) -> None:
    """Print a reward run's evaluation report: accuracy by slice, calibration, length bias, misranked pairs."""
    from rlhf.runs import read_json, resolve_run

    run_dir = resolve_run("reward", run)
    if not (run_dir / "eval_report.json").exists():
        raise WorkbenchError(f"{run_dir} has no eval_report.json (no held-out split, or the run did not finish)")
    r = read_json(run_dir / "eval_report.json")
    out.print(
        f"[bold]{run_dir}[/]  held-out pairs {r['pairs']}, accuracy {_pct(r['accuracy'])}, "
        f"annotator agreement {_pct(r['annotator_agreement'])}"
    )
    if (run_dir / "summary.json").exists():
        _print_learning({**read_json(run_dir / "summary.json"), **{k: r[k] for k in ("learning",) if k in r}})

    def interval(v: dict[str, Any]) -> str:
        return f"{_pct(v.get('low'))}-{_pct(v.get('high'))}" if v.get("low") is not None else "n/a"

    for key, title in (
        ("by_strength", "strength"),
        ("by_category", "category"),
        ("by_agreement", "agreement"),
        ("position", "chosen side"),
    ):
        rows = [[k, v["n"], _pct(v["accuracy"]), interval(v)] for k, v in r[key].items()]
        out.print(_table(f"accuracy by {title}", [title, "pairs", "accuracy", "95% interval"], rows))
    cal = r["calibration"]
    out.print(
        _table(
            f"calibration (ECE {cal['ece']:.3f})" if cal["ece"] is not None else "calibration",
            ["P(chosen)", "n", "mean predicted", "observed"],
            [
                [f"{b['lo']:.1f}-{b['hi']:.1f}", b["n"], f"{b['mean_predicted']:.2f}", f"{b['observed']:.2f}"]
                for b in cal["bins"]
            ],
        )
    )
    lb = r["length_bias"]
    corr = lb["pearson_reward_length"]
    out.print(
        f"length bias: corr(reward, length) = {'n/a' if corr is None else f'{corr:+.2f}'}; accuracy when "
        f"chosen is shorter {_pct(lb['chosen_shorter']['accuracy'])} (n={lb['chosen_shorter']['n']}), "
        f"longer {_pct(lb['chosen_longer']['accuracy'])} (n={lb['chosen_longer']['n']})"
    )
    mis = r["misranked"][:10]
    out.print(
        _table(
            f"misranked pairs (worst first; {r['misranked_total']} in all)",
            ["comparison", "gap", "prompt", "chosen", "rejected"],
            [
                [m["comparison_id"], f"{m['gap']:.2f}", m["prompt"][:40], m["chosen"][:40], m["rejected"][:40]]
                for m in mis
            ],
        )
    )


# -- PPO -------------------------------------------------------------------------------------


@app.command("ppo")
def ppo_cmd(
    reward: str | None = typer.Option(
        None, "--reward", help="Reward run folder or id under runs/reward/ (default: `latest`, or the resumed run's)."
    ),
    policy: str | None = typer.Option(None, help="Starting policy; default: the config's, else `default`."),
    prompts: Path | None = typer.Option(None, help="Prompt file (JSONL/CSV/datasets folder); default: the store's."),
    config: Path | None = typer.Option(
        None, "--config", help="YAML: our options + a `trl:` section of PPOConfig fields."
    ),
    max_steps: int | None = typer.Option(None, help="Stop after this many PPO steps (batches)."),
    lora: bool | None = typer.Option(None, "--lora/--full", help="LoRA on the policy, or full fine-tune."),
    resume: str | None = typer.Option(None, help="Resume this PPO run (folder or id) from its last checkpoint."),
    sets: list[str] | None = typer.Option(None, "--set", help="Override any option or PPOConfig field: KEY=VALUE."),
) -> None:
    """PPO fine-tuning of the policy against a reward model, with KL tracking and control."""
    from rlhf.configs import build_options, parse_sets, read_yaml
    from rlhf.ppo import PPOOptions, ppo_config_fields, saved_run_config, train_ppo
    from rlhf.runs import is_main_process, read_json, resolve_run

    overrides = parse_sets(sets)
    if policy is not None:
        overrides["policy"] = policy
    if lora is not None:
        overrides["lora"] = lora
    run_dir = None
    if resume is not None:
        run_dir = resolve_run("ppo", resume)
        overrides["resume"] = True
        if config is None:
            config_data, saved_reward = saved_run_config(run_dir)
            reward = reward or saved_reward
        else:
            config_data = read_yaml(config)
    else:
        config_data = read_yaml(config) if config else {}
    options, trl = build_options(PPOOptions, config_data, overrides, ppo_config_fields(), "PPO config")
    store = None if prompts is not None else _store()
    out_dir = train_ppo(
        resolve_run("reward", reward or "latest"),
        options,
        trl,
        max_steps=max_steps,
        prompts=prompts,
        store=store,
        run_dir=run_dir,
    )
    if not is_main_process():
        return  # one report per launch
    s = read_json(out_dir / "summary.json")
    out.print(f"PPO run: {out_dir}")
    out.print(json.dumps({k: v for k, v in s.items() if not isinstance(v, (dict, list))}, indent=1))
    _print_win_rate(out_dir)


def _print_win_rate(run_dir: Path) -> None:
    """The tuned policy's win rate over the reference on the held-out prompts, by the reward model,
    with n and its 95% interval, and the exact KL it paid."""
    from rlhf.runs import read_json
    from rlhf.stats import fmt_proportion, proportion

    if not (run_dir / "report.json").exists():
        return
    r = read_json(run_dir / "report.json")
    wr = r.get("win_rate_interval") or proportion(r["win_rate"] * r["prompts"], r["prompts"])
    counts = f", W/T/L {wr['wins']}/{wr['ties']}/{wr['losses']}" if "wins" in wr else ""
    out.print(
        f"held-out win rate by the reward model {fmt_proportion(wr)}{counts}; exact KL to the reference "
        f"{r['policy']['kl_to_ref']:.4f} nats/token; length {r['reference']['response_length']:.1f} -> "
        f"{r['policy']['response_length']:.1f} tokens"
    )


@inspect_app.command("ppo")
def inspect_ppo(run: str = typer.Argument("latest", help="Run folder or id under runs/ppo/ (`latest`).")) -> None:
    """Print a PPO run's before/after report and its last metrics."""
    from rlhf.runs import MetricsLog, read_json, resolve_run

    run_dir = resolve_run("ppo", run)
    out.print(f"[bold]{run_dir}[/]")
    if (run_dir / "summary.json").exists():
        s = read_json(run_dir / "summary.json")
        out.print(
            _table("summary", ["what", "value"], [[k, v] for k, v in s.items() if not isinstance(v, (dict, list))])
        )
    if (run_dir / "report.json").exists():
        r = read_json(run_dir / "report.json")
        out.print(
            _table(
                "reference vs tuned policy (held-out prompts)",
                ["what", "value"],
                [[k, v] for k, v in r.items() if not isinstance(v, (dict, list))],
            )
        )
        _print_win_rate(run_dir)
    rows = MetricsLog(run_dir).read()
    keys = ["objective/kl", "objective/scores", "objective/rlhf_reward", "kl/coef", "objective/entropy"]
    last = [m for m in rows if "objective/kl" in m][-5:]
    if last:
        out.print(
            _table("last steps", ["step", *keys], [[m.get("step"), *[_fmt(m.get(k)) for k in keys]] for m in last])
        )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- human evaluation ------------------------------------------------------------------------


@human_eval_app.command("queue")
def human_eval_queue(
    run: str = typer.Argument("latest", help="PPO run folder or id under runs/ppo/ (`latest`)."),
    limit: int | None = typer.Option(None, help="Only the first N held-out prompts (default: all)."),
    labels: int = typer.Option(1, "--labels", help="Labels each comparison needs."),
    seed: int = typer.Option(0, help="Seed of the (per prompt) side the tuned policy's response takes."),
) -> None:
    """Queue the run's held-out prompts (reference vs tuned policy, blind) in the annotators' queue."""
    from rlhf.human_eval import queue_human_evaluation
    from rlhf.runs import resolve_run

    c = queue_human_evaluation(_store(), resolve_run("ppo", run), limit=limit, required_labels=labels, seed=seed)
    out.print(
        f"run {c['run_id']}: queued {c['queued']} comparisons ({c['required_labels']} label(s) each) from "
        f"{c['considered']} of {c['pairs']} held-out prompts; {c['already_queued']} already queued, "
        f"{c['identical_skipped']} skipped (identical responses), {c['prompts_added']} prompts added"
    )


@human_eval_app.command("results")
def human_eval_results(
    run: str = typer.Argument("latest", help="PPO run folder or id under runs/ppo/ (`latest`)."),
) -> None:
    """The tuned policy's win rate by people (ties count half), with n, 95% interval and W/T/L."""
    from rlhf.human_eval import evaluation_source, human_evaluation_results
    from rlhf.runs import resolve_run
    from rlhf.stats import fmt_proportion

    store = _store()
    try:
        run_id = resolve_run("ppo", run).name
    except WorkbenchError:
        # The run folder may be gone while its labels stay in the store.
        if "/" in run or not store.comparison_counts(evaluation_source(run))["comparisons"]:
            raise
        run_id = run
    r = human_evaluation_results(store, run_id)
    if not r["comparisons"]:
        raise WorkbenchError(f"run {run_id} has no human evaluation queued; run `rlhf human-eval queue {run_id}`")

    def wtl(w: dict[str, Any]) -> str:
        return f"W/T/L {w['wins']}/{w['ties']}/{w['losses']}"

    wr = r["win_rate"]
    out.print(
        f"run {run_id}: win rate of the tuned policy by people {fmt_proportion(wr)}, {wtl(wr)} "
        f"(95% Wilson interval; n = labels; {r['note']}; {r['both_bad']} both bad)"
    )
    out.print(f"comparisons: {r['comparisons']}, waiting for labels: {r['pending']}")
    if r["by_annotator"]:
        rows = [[escape(name), fmt_proportion(w), wtl(w)] for name, w in r["by_annotator"].items()]
        out.print(_table("per annotator", ["annotator", "win rate [95% interval] (n)", "W/T/L"], rows))


# -- pipeline --------------------------------------------------------------------------------


@pipeline_app.command("run")
def pipeline_run(
    config: Path = typer.Argument(..., help="Pipeline YAML, e.g. pipelines/configs/quick.yaml."),
    round: int | None = typer.Option(None, "--round", help="Run round N (rounds before it are brought up to date)."),
    force: bool = typer.Option(
        False, "--force", help="Run PPO even if the reward model learned nothing measurable (otherwise: stop there)."
    ),
) -> None:
    """Run one RLHF round: candidates, simulated labels, export, reward model, PPO, evaluation, report.

    Stages whose config and inputs are unchanged are skipped. A reward model whose held-out accuracy
    shows no learning stops the round before PPO, unless --force."""
    from rlhf.pipeline import run_pipeline

    start = time.perf_counter()

    def progress(n: int, stage: str, status: str) -> None:
        err.print(f"round {n} {stage}: {status} ({time.perf_counter() - start:.0f} s)")

    folder = run_pipeline(config, round=round, progress=progress, force=force)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    learning = report["reward_model"].get("learning") or {}
    out.print(
        f"reward model: {learning.get('status', '?')}: {learning.get('message', '')}\n"
        f"round folder: {folder}\nreport: {folder / 'report.html'}",
        highlight=False,
    )


@app.command("round")
def round_(
    config: Path = typer.Argument(..., help="Pipeline YAML: its generation, export, reward and ppo sections."),
    force: bool = typer.Option(
        False, "--force", help="Run PPO even if the reward model learned nothing measurable (otherwise: stop there)."
    ),
) -> None:
    """Close the labeling round of the data home's store and open the next (the app's Rounds page).

    Every label so far -> reward model -> PPO from the previous round's policy -> candidates for the
    next round from the tuned policy, in the annotators' queues. Unchanged stages are skipped. A
    reward model whose held-out accuracy shows no learning stops the round before PPO, unless --force."""
    from rlhf.pipeline import run_store_round

    start = time.perf_counter()

    def progress(n: int, stage: str, status: str) -> None:
        err.print(f"round {n} {stage}: {status} ({time.perf_counter() - start:.0f} s)", highlight=False)

    from rlhf.stats import fmt_proportion

    folder = run_store_round(config, progress=progress, force=force)
    summary = json.loads((folder / "round.json").read_text(encoding="utf-8"))
    accuracy = summary.get("reward_eval_accuracy_interval")
    learning = (summary.get("reward_learning") or {}).get("status", "?")
    out.print(
        f"round {summary['round']} closed: reward model held-out accuracy "
        f"{fmt_proportion(accuracy) if accuracy else summary['reward_eval_accuracy']} ({learning}), "
        f"policy {summary['policy']}\nround {summary['next_round']}: {summary['next_round_comparisons']} "
        f"comparisons to label\nround folder: {folder}",
        highlight=False,
    )


@pipeline_app.command("check")
def pipeline_check(config: Path = typer.Argument(..., help="Pipeline YAML.")) -> None:
    """Validate a pipeline YAML (every problem at once) without running anything."""
    from rlhf.pipeline import load_pipeline_config

    cfg = load_pipeline_config(config)
    out.print(f"{config}: ok (pipeline {cfg.name!r})")


# -- demo ------------------------------------------------------------------------------------


@app.command()
def demo(
    limit: int = typer.Option(24, help="Prompts to generate candidates for (the rest can be done later)."),
    model: str = typer.Option("default", help="Policy that writes the candidates."),
    max_new_tokens: int = typer.Option(96, help="Longest candidate in tokens."),
) -> None:
    """Seed the store with the shipped demo prompts, generate candidates, make an admin login."""
    from rlhf.home import ensure_home
    from rlhf.io import import_prompts
    from rlhf.store import Store

    ensure_home()
    store = Store()
    store.init()
    _print_import("demo prompts", import_prompts(store, DEMO_PROMPTS, source="demo"))
    generate(
        model=model,
        limit=limit,
        category=None,
        greedy=False,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        max_new_tokens=max_new_tokens,
        num_candidates=2,
        seed=0,
        batch_size=8,
        overlap=None,
        round=0,
        dtype="auto",
        device="auto",
    )
    if not any(a.role == "admin" and a.active for a in store.list_annotators()):
        a, token = store.add_annotator("admin", role="admin")
        (ensure_home() / "admin-token.txt").write_text(token + "\n")
        out.print(f"admin login token (also in {ensure_home() / 'admin-token.txt'}): {token}")
    status()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: friendly errors with exit code 2, never a traceback for user errors."""
    try:
        app(args=argv, prog_name="rlhf", standalone_mode=False)
    except WorkbenchError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except TyperException as e:  # usage errors (typer vendors click; its exceptions derive from this)
        e.show()
        return getattr(e, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
