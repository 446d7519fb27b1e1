"""The whole RLHF loop as one pipeline of rounds: prompts -> candidates -> labels -> export ->
reward model -> PPO -> evaluation -> report, each stage a folder, skipped when already done.

Reads one YAML (see `pipelines/configs/quick.yaml`); `load_pipeline_config` checks every section
up front and raises one `ValidationError` listing every problem before anything runs. Writes

    <RLHF_HOME>/pipeline/<name>/
      store.db                 the pipeline's own preference store (SQLite): prompts, every round's
                               candidates (comparison.round = N) and the simulated annotator's labels
      round-<N>/
        1-prompts/  2-generate/  3-label/  4-export/  5-reward/  6-ppo/  7-evaluate/  8-report/
                    each holds stage.json (written last: config, input hashes, key, output hash,
                    seconds) beside the stage's own outputs (export dataset, reward run, PPO run ...);
                    training checkpoints are deleted once a run finished (a stage re-runs, never resumes)
        report.html            one self-contained page (inline SVG plots), report.json, and the
                               same four plots as plots/*.png

Prompts: the pipeline's prompts (in the order they were added) are split once per round's config:
the LAST max(evaluation.prompts, ppo.eval_prompts) are held out (never given candidates, labeled or
trained on by PPO: the evaluation stage and PPO's held-out evaluation use them), the rest are the
training pool. Round N gives candidates to the pool's next `generation.limit` prompts, starting at
N x limit and wrapping around (`round_window`), so rounds label new prompts; PPO trains on the whole
pool.

Skip-if-done: a stage's key is the hash of its resolved config section and the output hashes of
the stages it reads. A stage whose stage.json holds the same key is skipped; any change re-runs
that stage, and (their inputs changed with it) every later stage. Round N > 0 first brings rounds
0..N-1 up to date, then generates its candidates with round N-1's PPO policy (`6-ppo/run/policy`)
and trains on the labels of every round so far.

The SIMULATED annotator (`rlhf/annotators.py`) stands in for people so the loop runs headless
(`rlhf pipeline run`, `make pipeline`). `annotator.rule` names one of its rules (`annotators.RULES`;
default `addresses_reader`: an answer that speaks to the reader beats one that does not; also `uses_list`,
`gives_numbers`, and `complete_then_longer`, the old length rule that quick.yaml's random tiny model
still uses). Each pair (A, B) gets the rule's verdict on the prompt's text and both responses; a
decisive verdict is flipped with probability `noise`, drawn per comparison from
`random.Random(f"{seed}:{comparison_id}")` (a tie stays a tie), so a run is reproducible and a label
does not depend on the order comparisons are visited. Labels carry the rationale `simulated:<rule>`.

Truth beside the reward model: the rule is known, so the evaluation stage judges each round's policy
against the starting model by the rule (win rate with n and its 95% Wilson interval, the rule's mean
score of both, mean lengths and their ratio) next to the reward model's scores, and the report shows
them side by side: "reward up, truth down" (reward hacking) is visible.

Stop before PPO: after the reward stage, a reward run whose `learning.status`
(`rlhf.stats.learning_verdict` on its held-out accuracy) is not `learned` stops the round with a
`WorkbenchError`: the verdict's message plus "; pass --force to run PPO anyway". `force=True`
(`--force`) runs PPO on it anyway, and the report then says so in a red banner. quick.yaml (a tiny
random model, a handful of held-out pairs) learns nothing by design: run it with --force.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf import annotators
from rlhf.errors import ValidationError, WorkbenchError
from rlhf.runs import MetricsLog, read_json, write_json

log = logging.getLogger(__name__)

STAGES = ("prompts", "generate", "label", "export", "reward", "ppo", "evaluate", "report")
SECTIONS = ("name", "prompts", "generation", "annotator", "export", "reward", "ppo", "evaluation")
DEMO_PROMPTS = Path(__file__).parent / "data" / "demo_prompts.jsonl"

Progress = Callable[[int, str, str], None]  # progress(round, stage, "running" | "skipped" | "done")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class AnnotatorConfig:
    """The simulated annotator (`rlhf/annotators.py`; see the module doc)."""

    name: str = field(
        default="simulated", metadata={"help": "Annotator name in the store; must start with `simulated`."}
    )
    rule: str = field(
        default=annotators.DEFAULT_RULE,
        metadata={"help": f"Preference rule (rlhf/annotators.py), one of {', '.join(annotators.RULES)}."},
    )
    noise: float = field(default=0.0, metadata={"help": "Probability of flipping each verdict (0 = always the rule)."})
    seed: int = field(default=0, metadata={"help": "Seed of the per-comparison flip draws."})

    def problems(self) -> list[str]:
        p = []
        if not self.name.startswith("simulated"):
            p.append(f"`name` must start with `simulated` (labels by a rule must be recognisable), got {self.name!r}")
        if self.rule not in annotators.RULES:
            p.append(f"`rule` must be one of {', '.join(annotators.RULES)}, got {self.rule!r}")
        if not 0 <= self.noise <= 1:
            p.append(f"`noise` must be a probability in [0, 1], got {self.noise}")
        return p


@dataclass
class EvaluationConfig:
    """Round comparison: each round's policy against the starting model on the same prompts."""

    prompts: int = field(
        default=8,
        metadata={"help": "Prompts evaluated: the first N of the held-out prompts (never labeled, never trained on)."},
    )
    max_new_tokens: int = field(default=48, metadata={"help": "Response length for every policy compared."})
    temperature: float = field(
        default=0.7,
        metadata={"help": "Sampling temperature, the same seed for every policy; 0 = greedy decoding."},
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed shared by every policy compared."})
    samples: int = field(default=4, metadata={"help": "Before/after samples shown in the report."})

    def problems(self) -> list[str]:
        p = []
        if self.prompts < 1:
            p.append(f"`prompts` must be >= 1, got {self.prompts}")
        if self.max_new_tokens < 1:
            p.append(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            p.append(f"`temperature` must be >= 0 (0 = greedy), got {self.temperature}")
        if self.samples < 0:
            p.append(f"`samples` must be >= 0, got {self.samples}")
        return p


@dataclass
class PipelineConfig:
    """One round's recipe, validated (`load_pipeline_config`)."""

    name: str
    path: Path
    prompts: str  # "demo" | "store" (the data home's store) | a resolved file path
    model: str  # the starting policy: generates round 0; base of the reward model and of PPO
    generation: Any  # GenerationSettings
    generation_limit: int | None
    annotator: AnnotatorConfig
    export: Any  # ExportOptions
    reward: Any  # RewardOptions
    reward_trl: dict[str, Any]
    reward_max_steps: int | None
    ppo: Any  # PPOOptions
    ppo_trl: dict[str, Any]
    ppo_max_steps: int | None
    evaluation: EvaluationConfig

    def section(self, stage: str) -> dict[str, Any]:
        """The resolved config a stage's key hashes (defaults included: a changed default re-runs it)."""
        asdict = dataclasses.asdict
        return {
            "prompts": {"prompts": self.prompts},
            "generate": {"model": self.model, "limit": self.generation_limit, **asdict(self.generation)},
            "label": asdict(self.annotator),
            "export": asdict(self.export),
            "reward": {"options": asdict(self.reward), "trl": self.reward_trl, "max_steps": self.reward_max_steps},
            "ppo": {"options": asdict(self.ppo), "trl": self.ppo_trl, "max_steps": self.ppo_max_steps},
            "evaluate": asdict(self.evaluation),
            "report": {"version": 2},  # 2: n, intervals, the learning verdict, the truth
        }[stage]


def _section(data: dict[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    v = data.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        problems.append(f"`{key}` must be a mapping of option: value, got {v!r}")
        return {}
    return dict(v)


def _pop_int(section: dict[str, Any], key: str, where: str, problems: list[str]) -> int | None:
    v = section.pop(key, None)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        problems.append(f"`{where}.{key}` must be a whole number >= 1 (or null), got {v!r}")
        return None
    return v


def _options(cls: type, config: dict[str, Any], trl_fields: set[str], where: str, problems: list[str]) -> Any:
    """build_options, its problems prefixed by the section and collected, not raised. Unknown keys
    are reported here and left out, so the known ones are still checked (every problem at once)."""
    from rlhf.configs import build_options

    ours = {f.name for f in dataclasses.fields(cls)}
    clean = {}
    for k, v in config.items():
        if k == "trl" and trl_fields and isinstance(v, dict):
            bad = [t for t in v if t not in trl_fields]
            problems.extend(f"{where}: unknown TRL config field `trl.{t}`" for t in bad)
            clean[k] = {t: x for t, x in v.items() if t not in bad}
        elif k in ours or k in trl_fields or (k == "trl" and trl_fields):
            clean[k] = v
        else:
            problems.append(f"{where}: unknown option `{k}`; see the comments in pipelines/configs/quick.yaml")
    try:
        return build_options(cls, clean, {}, trl_fields, where)
    except ValidationError as e:
        problems += [f"{where}: {p}" for p in e.problems]
    except TypeError as e:  # a value of a type the dataclass cannot even hold
        problems.append(f"{where}: {e}")
    return None, {}


def _model_problem(name: Any, where: str) -> str | None:
    from rlhf.models import REGISTRY, canonical_name

    if not isinstance(name, str) or not name:
        return f"`{where}` must be a model name or folder, got {name!r}"
    if canonical_name(name) in REGISTRY or Path(name).expanduser().is_dir() or name.count("/") == 1:
        return None
    return f"`{where}`: unknown model {name!r} (not a registry name like default/tiny, a folder or a hub id)"


def load_pipeline_config(path: Path) -> PipelineConfig:
    """Read and check a pipeline YAML; one ValidationError lists every problem of every section."""
    from rlhf.configs import read_yaml
    from rlhf.generate import GenerationSettings
    from rlhf.io import ExportOptions
    from rlhf.ppo import PPOOptions, ppo_config_fields
    from rlhf.reward import RewardOptions, reward_config_fields

    path = Path(path)
    data = read_yaml(path)
    problems: list[str] = []
    for k in data:
        if k not in SECTIONS:
            problems.append(f"unknown section `{k}`; the sections are {', '.join(SECTIONS)}")

    name = data.get("name") or path.stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        problems.append(f"`name` must be letters, digits, - or _ (it names the folder), got {name!r}")

    prompts = data.get("prompts", "demo")
    if prompts not in ("demo", "store"):
        p = Path(str(prompts)).expanduser()
        found = next((c for c in (p, path.parent / p) if c.exists()), None)
        if found is None:
            problems.append(f"`prompts`: {prompts!r} is not `demo`, `store` or an existing prompt file")
        else:
            prompts = str(found.resolve())

    gen = _section(data, "generation", problems)
    model = gen.pop("model", "default")
    if msg := _model_problem(model, "generation.model"):
        problems.append(msg)
    limit = _pop_int(gen, "limit", "generation", problems)
    settings, _ = _options(GenerationSettings, gen, set(), "generation", problems)

    ann = _section(data, "annotator", problems)
    annotator, _ = _options(AnnotatorConfig, ann, set(), "annotator", problems)
    export, _ = _options(ExportOptions, _section(data, "export", problems), set(), "export", problems)

    rw = _section(data, "reward", problems)
    reward_max = _pop_int(rw, "max_steps", "reward", problems)
    rw.setdefault("model", model)  # the reward model must share the policy's tokenizer
    reward, reward_trl = _options(RewardOptions, rw, reward_config_fields(), "reward", problems)

    pp = _section(data, "ppo", problems)
    ppo_max = _pop_int(pp, "max_steps", "ppo", problems)
    if "policy" in pp:
        problems.append("ppo: `policy` is set by the pipeline (round 0: `generation.model`; round N: round N-1's)")
        pp.pop("policy")
    if pp.get("resume"):
        problems.append("ppo: `resume` is not a pipeline option (a finished stage is skipped instead)")
    pp["policy"] = model if isinstance(model, str) else "default"
    ppo, ppo_trl = _options(PPOOptions, pp, ppo_config_fields(), "ppo", problems)
    if ppo is not None and ppo.eval_prompts < 1:
        problems.append("ppo: `eval_prompts` must be >= 1: the report's before/after samples come from it")

    evaluation, _ = _options(EvaluationConfig, _section(data, "evaluation", problems), set(), "evaluation", problems)

    if problems:
        raise ValidationError(f"pipeline config {path}", problems)
    return PipelineConfig(
        name=name,
        path=path.resolve(),
        prompts=str(prompts),
        model=model,
        generation=settings,
        generation_limit=limit,
        annotator=annotator,
        export=export,
        reward=reward,
        reward_trl=reward_trl,
        reward_max_steps=reward_max,
        ppo=ppo,
        ppo_trl=ppo_trl,
        ppo_max_steps=ppo_max,
        evaluation=evaluation,
    )


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _files_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class _Round:
    config: PipelineConfig
    number: int
    root: Path  # <home>/pipeline/<name>
    store: Any
    progress: Progress | None
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> its stage.json

    @property
    def dir(self) -> Path:
        return self.root / f"round-{self.number}"

    def stage_dir(self, stage: str, number: int | None = None) -> Path:
        n = self.number if number is None else number
        return self.root / f"round-{n}" / f"{STAGES.index(stage) + 1}-{stage}"

    def run(
        self,
        stage: str,
        inputs: dict[str, str],
        work: Callable[[Path], dict[str, Any]],
        still_valid: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Run `work(folder)` unless the folder already holds this stage's output for the same key.

        `work` returns {"output_hash": ..., **anything worth recording}; stage.json is written last,
        so an interrupted stage is redone, never trusted."""
        section = self.config.section(stage)
        key = _hash({"stage": stage, "config": section, "inputs": inputs})
        folder = self.stage_dir(stage)
        record_path = folder / "stage.json"
        if record_path.exists():
            record = read_json(record_path)
            if record.get("key") == key and (still_valid is None or still_valid(record)):
                log.info("round %d: %s is up to date, skipped", self.number, stage)
                if self.progress:
                    self.progress(self.number, stage, "skipped")
                self.done[stage] = record
                return record
        if self.progress:
            self.progress(self.number, stage, "running")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        result = work(folder)
        record = {
            "stage": stage,
            "round": self.number,
            "key": key,
            "inputs": inputs,
            "config": section,
            "seconds": time.perf_counter() - start,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **result,
        }
        write_json(record_path, record)
        log.info("round %d: %s done in %.1f s", self.number, stage, record["seconds"])
        if self.progress:
            self.progress(self.number, stage, "done")
        self.done[stage] = record
        return record


def _prompt_records(prompts: str) -> list[Any]:
    from rlhf.io import read_prompts
    from rlhf.store import PromptRecord, Store

    if prompts == "demo":
        return read_prompts(DEMO_PROMPTS)
    if prompts == "store":
        from rlhf.ppo import load_prompt_rows

        rows, _ = load_prompt_rows(None, Store())
        return [PromptRecord(content=c, split=s, source="store") for c, s in rows]
    return read_prompts(Path(prompts))


def _stage_prompts(r: _Round) -> dict[str, Any]:
    from rlhf.store import content_hash

    records = _prompt_records(r.config.prompts)
    contents_hash = _hash(sorted(content_hash(p.content) for p in records))

    def work(folder: Path) -> dict[str, Any]:
        added, present = r.store.add_prompts(records)
        write_json(folder / "prompts.json", {"source": r.config.prompts, "read": len(records), "added": added})
        return {"output_hash": contents_hash, "prompts": len(records), "added": added, "already_present": present}

    def in_store(record: dict[str, Any]) -> bool:
        return r.store.counts().get("prompts", 0) >= record.get("prompts", 0)

    return r.run("prompts", {"prompts": contents_hash}, work, in_store)


def round_window(pool: int, number: int, limit: int | None) -> list[int]:
    """Indices into the training pool of the prompts round `number` gives candidates to: `limit`
    of them from number x limit on, wrapping around the pool's end; all of them without a limit."""
    if pool < 1:
        return []
    if limit is None or limit >= pool:
        return list(range(pool))
    start = number * limit % pool
    return [(start + i) % pool for i in range(limit)]


@dataclass
class PromptPlan:
    """The pipeline store's prompts split for a round: (id, content) pairs in id order."""

    pool: list[tuple[int, Any]]  # candidates and PPO training
    held_out: list[tuple[int, Any]]  # evaluation only

    def ids_hash(self) -> str:
        return _hash([[i for i, _ in self.pool], [i for i, _ in self.held_out]])


def _prompt_plan(r: _Round) -> PromptPlan:
    from sqlalchemy import select

    from rlhf.schema import Prompt

    with r.store.session() as s:
        rows = [(p.id, p.content) for p in s.scalars(select(Prompt).order_by(Prompt.id))]
    n_held = max(r.config.evaluation.prompts, r.config.ppo.eval_prompts)
    if len(rows) < n_held + 2:
        raise WorkbenchError(
            f"the pipeline has {len(rows)} prompts; it holds out the last {n_held} for evaluation "
            f"(the larger of evaluation.prompts and ppo.eval_prompts) and needs at least 2 more to train on: "
            "add prompts or lower those two settings"
        )
    return PromptPlan(rows[: len(rows) - n_held], rows[len(rows) - n_held :])


def _round_comparisons(store: Any, number: int) -> list[Any]:
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload

    from rlhf.schema import Comparison

    with store.session() as s:
        q = (
            select(Comparison)
            .options(
                joinedload(Comparison.prompt),
                joinedload(Comparison.completion_a),
                joinedload(Comparison.completion_b),
            )
            .where(Comparison.round == number)
            .order_by(Comparison.id)
        )
        return list(s.scalars(q).unique())


def _delete_round(store: Any, number: int) -> None:
    """Drop a round's comparisons, their labels and completions: a re-run generation replaces them.

    Only ever on the pipeline's own store, whose round-N comparisons are exactly what this
    pipeline's round-N generate stage made."""
    from sqlalchemy import delete, select

    from rlhf.schema import Comparison, Completion, Label

    with store.transaction() as s:
        comps = list(s.scalars(select(Comparison).where(Comparison.round == number)))
        ids = [c.id for c in comps]
        completions = {c.completion_a_id for c in comps} | {c.completion_b_id for c in comps}
        if ids:
            s.execute(delete(Label).where(Label.comparison_id.in_(ids)))
            s.execute(delete(Comparison).where(Comparison.id.in_(ids)))
        if completions:
            s.execute(delete(Completion).where(Completion.id.in_(completions)))


def _comparisons_hash(comps: list[Any]) -> str:
    return _hash([[c.id, c.prompt_id, c.completion_a.text, c.completion_b.text, c.completion_a.model] for c in comps])


def _stage_generate(
    r: _Round,
    policy: str,
    inputs: dict[str, str],
    plan: PromptPlan,
    number: int,
    required_labels: int | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Candidates from `policy` for round `number`'s window of the pool (comparison.round = number).

    `replace`: drop that round's comparisons first (only in a pipeline's own store: its round-N
    comparisons are exactly what this stage made); the data home's store keeps everything."""
    from rlhf.generate import generate_candidates

    window = round_window(len(plan.pool), number, r.config.generation_limit)
    ids = [plan.pool[i][0] for i in window]
    prompts = {"pool": len(plan.pool), "held_out": len(plan.held_out), "first": window[0], "count": len(ids)}

    def work(folder: Path) -> dict[str, Any]:
        if replace:
            _delete_round(r.store, number)
        report = generate_candidates(
            r.store,
            model=policy,
            settings=r.config.generation,
            required_labels=required_labels,
            round=number,
            prompt_ids=ids,
        )
        comps = _round_comparisons(r.store, number)
        if not comps:
            raise WorkbenchError(
                f"round {number}: generation made no comparison (every pair identical?); "
                "raise `generation.temperature` or `generation.num_candidates`"
            )
        rows = [
            {
                "comparison": c.id,
                "prompt_id": c.prompt_id,
                "a": c.completion_a.text,
                "b": c.completion_b.text,
                "finish_a": c.completion_a.finish_reason,
                "finish_b": c.completion_b.finish_reason,
            }
            for c in comps
        ]
        (folder / "candidates.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
        summary = {**dataclasses.asdict(report), "tokens_per_s": report.tokens_per_s, "model": policy}
        return {
            "output_hash": _comparisons_hash(comps),
            "round": number,
            "comparisons": len(comps),
            "generation": summary,
            "prompts": prompts,
        }

    def in_store(record: dict[str, Any]) -> bool:
        comps = _round_comparisons(r.store, number)
        return bool(comps) and _comparisons_hash(comps) == record["output_hash"]

    return r.run("generate", {**inputs, "window": _hash(ids)}, work, in_store)


def _annotator_id(store: Any, name: str) -> int:
    for a in store.list_annotators():
        if a.name == name:
            if not a.active:
                store.set_annotator_active(a.id, True)
            return a.id
    a, _ = store.add_annotator(name)
    return a.id


def _labels_hash(store: Any, number: int, annotator_id: int) -> str:
    return _hash(
        [
            [x.comparison_id, x.choice, x.strength]
            for x in _round_labels(store, number)
            if x.annotator_id == annotator_id
        ]
    )


def _round_labels(store: Any, number: int) -> list[Any]:
    from sqlalchemy import select

    from rlhf.schema import Comparison, Label

    with store.session() as s:
        q = (
            select(Label)
            .join(Comparison, Comparison.id == Label.comparison_id)
            .where(Comparison.round == number, Label.status == "submitted")
            .order_by(Label.comparison_id)
        )
        return list(s.scalars(q))


def _stage_label(r: _Round) -> dict[str, Any]:
    from sqlalchemy import delete, select

    from rlhf.schema import Comparison, Label

    cfg = r.config.annotator
    annotator_id = _annotator_id(r.store, cfg.name)

    def work(folder: Path) -> dict[str, Any]:
        with r.store.transaction() as s:  # a re-run replaces this annotator's labels of the round
            ids = select(Comparison.id).where(Comparison.round == r.number)
            s.execute(delete(Label).where(Label.annotator_id == annotator_id, Label.comparison_id.in_(ids)))
        rows = []
        for c in _round_comparisons(r.store, r.number):
            a = (c.completion_a.text, c.completion_a.finish_reason)
            b = (c.completion_b.text, c.completion_b.finish_reason)
            lab = annotators.simulated_label(cfg.rule, c.id, _prompt_str(c.prompt.content), a, b, cfg.noise, cfg.seed)
            r.store.save_label(
                c.id, annotator_id, lab["choice"], strength=lab["strength"], rationale=f"simulated:{cfg.rule}"
            )
            rows.append(lab)
        (folder / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
        counts = {k: sum(x["choice"] == k for x in rows) for k in ("A", "B", "tie")}
        return {
            "output_hash": _labels_hash(r.store, r.number, annotator_id),
            "labels": len(rows),
            "choices": counts,
            "flipped": sum(x["flipped"] for x in rows),
            "annotator": cfg.name,
        }

    def in_store(record: dict[str, Any]) -> bool:
        return _labels_hash(r.store, r.number, annotator_id) == record["output_hash"]

    return r.run("label", {"generate": r.done["generate"]["output_hash"]}, work, in_store)


def _stage_export(r: _Round, label_hashes: list[str]) -> dict[str, Any]:
    from rlhf.io import export_preferences
    from rlhf.runs import folder_hash

    options = r.config.export
    if options.rounds is None:  # every round so far: the reward model learns from all labels
        options = dataclasses.replace(options, rounds=list(range(r.number + 1)))

    def work(folder: Path) -> dict[str, Any]:
        res = export_preferences(r.store, folder / "dataset", options, force=True)
        return {"output_hash": folder_hash(folder / "dataset"), "counts": res.counts, "rounds": options.rounds}

    return r.run("export", {"labels": _hash(label_hashes)}, work)


def _stage_reward(r: _Round) -> dict[str, Any]:
    from rlhf.reward import train_reward

    def work(folder: Path) -> dict[str, Any]:
        run = folder / "run"
        run.mkdir()
        train_reward(
            folder.parent / "4-export" / "dataset",
            r.config.reward,
            r.config.reward_trl,
            r.config.reward_max_steps,
            run_dir=run,
        )
        shutil.rmtree(run / "checkpoints", ignore_errors=True)  # see _stage_ppo
        summary = read_json(run / "summary.json")
        return {
            "output_hash": _files_hash(run / "summary.json", run / "reward_stats.json", run / "model" / "config.json"),
            "eval_accuracy": summary.get("eval_accuracy"),
            "eval_accuracy_before": summary.get("eval_accuracy_before"),
            **reward_verdict(summary),
        }

    def model_there(record: dict[str, Any]) -> bool:
        return (r.stage_dir("reward") / "run" / "model" / "config.json").exists()

    return r.run("reward", {"export": r.done["export"]["output_hash"]}, work, model_there)


def _accuracy_interval(accuracy: Any, n: int) -> dict[str, Any]:
    from rlhf.stats import proportion

    if not isinstance(accuracy, (int, float)) or n < 1:
        return proportion(0, 0)
    return proportion(min(max(accuracy * n, 0.0), n), n)


def reward_verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """A reward run's held-out numbers with n and 95% intervals, and its `learning` verdict, from its
    summary.json. A summary written before the reward run recorded them (no `learning`,
    no `eval_accuracy_interval`) gets them computed here from `eval_accuracy`, `test_pairs` and
    `eval_accuracy_before`, the way `rlhf.reward` does."""
    from rlhf.stats import learning_verdict

    n = int(summary.get("test_pairs") or 0)
    acc, before = summary.get("eval_accuracy"), summary.get("eval_accuracy_before")
    return {
        "test_pairs": n,
        "eval_accuracy_interval": summary.get("eval_accuracy_interval") or _accuracy_interval(acc, n),
        "eval_accuracy_before_interval": _accuracy_interval(before, n),
        "learning": summary.get("learning") or learning_verdict(acc, n, before),
    }


def _reward_facts(r: _Round) -> dict[str, Any]:
    """`reward_verdict` of the round's reward run (its summary.json: a stage.json written before
    these fields existed lacks them)."""
    summary_path = r.stage_dir("reward") / "run" / "summary.json"
    return reward_verdict(read_json(summary_path) if summary_path.exists() else {})


def require_learning(learning: dict[str, Any], force: bool) -> None:
    """Stop before PPO when the reward model did not show learning, unless `force`."""
    if learning.get("status") == "learned":
        return
    if force:
        log.warning("reward model %s (%s); running PPO anyway (force)", learning.get("status"), learning.get("message"))
        return
    raise WorkbenchError(
        f"{learning.get('message', 'the reward model did not show learning')}; pass --force to run PPO anyway"
    )


def _stage_ppo(r: _Round, policy: str, policy_hash: str, plan: PromptPlan) -> dict[str, Any]:
    from rlhf.ppo import train_ppo

    def work(folder: Path) -> dict[str, Any]:
        run = folder / "run"
        run.mkdir()
        options = dataclasses.replace(r.config.ppo, policy=policy)
        reward_run = r.stage_dir("reward") / "run"
        # The pool is trained on; the held-out prompts are PPO's `test` split: its evaluation prompts.
        prompts = folder / "prompts.jsonl"
        rows = [{"prompt": c, "split": "train"} for _, c in plan.pool]
        rows += [{"prompt": c, "split": "test"} for _, c in plan.held_out]
        prompts.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
        train_ppo(reward_run, options, r.config.ppo_trl, r.config.ppo_max_steps, prompts=prompts, run_dir=run)
        # The pipeline re-runs a stage rather than resuming it: the checkpoints (policy + value +
        # optimizer, ~3 GB each for SmolLM2) have served (KL budget) once the policy is saved.
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        summary = read_json(run / "summary.json")
        return {
            "output_hash": _files_hash(run / "summary.json", run / "metrics.jsonl"),
            "policy": str(run / "policy"),
            "eval": summary.get("eval"),
            "seconds_per_step": summary.get("seconds_per_step"),
        }

    def policy_there(record: dict[str, Any]) -> bool:
        return (r.stage_dir("ppo") / "run" / "policy" / "config.json").exists()

    inputs = {"reward": r.done["reward"]["output_hash"], "policy": policy_hash, "prompts": plan.ids_hash()}
    return r.run("ppo", inputs, work, policy_there)


def _stage_evaluate(r: _Round, policies: dict[str, str], ppo_hashes: list[str], plan: PromptPlan) -> dict[str, Any]:
    """Responses of the starting model and of each round's policy on the same held-out prompts,
    scored by this round's reward model and judged by the simulated annotator's rule (no noise),
    each policy against the start (`base`, the reference), ties counting half. Per policy: the
    reward model's mean score and win rate, the rule's win rate (`rule_win_rate`: value, n, 95%
    interval, wins / ties / losses), the rule's mean score of the reference's and the policy's
    responses (the truth), and the mean length of each with their ratio."""
    from rlhf.generate import GenerationSettings, generate_responses
    from rlhf.models import load_causal_lm
    from rlhf.reward import encode_pair_side, load_reward_model, score_sequences
    from rlhf.stats import win_rate

    cfg = r.config.evaluation
    rule = annotators.get_rule(r.config.annotator.rule)

    prompts = [c for _, c in plan.held_out[: cfg.prompts]]  # never labeled, never trained on

    def work(folder: Path) -> dict[str, Any]:
        sample = cfg.temperature > 0
        settings = GenerationSettings(
            do_sample=sample,
            temperature=cfg.temperature if sample else 1.0,
            num_candidates=1,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=max(1, len(prompts)),
        )
        responses: dict[str, list[Any]] = {}
        for label, path in policies.items():
            lm, tok = load_causal_lm(path)
            responses[label] = [g[0] for g in generate_responses(lm, tok, prompts, settings, seed=cfg.seed)]
            del lm
        rm, rtok = load_reward_model(r.stage_dir("reward") / "run")
        chat = bool(getattr(rtok, "chat_template", None))

        def side(prompt: Any, text: str) -> list[int]:
            return encode_pair_side(rtok, prompt, [{"role": "assistant", "content": text}] if chat else text)

        scores = {
            label: score_sequences(rm, [side(p, g.text) for p, g in zip(prompts, gens)], rtok.pad_token_id)
            for label, gens in responses.items()
        }
        texts = [_prompt_str(p) for p in prompts]
        rule_scores = {
            label: [rule.score(t, g.text, g.finish_reason) for t, g in zip(texts, gens)]
            for label, gens in responses.items()
        }

        def mean(xs: list[float]) -> float:
            return sum(xs) / len(xs)

        base = responses["base"]
        base_length = mean([len(g.text) for g in base])
        per_policy: dict[str, Any] = {}
        for label, gens in responses.items():
            rm_outcomes = [
                1.0 if mine > theirs else 0.5 if mine == theirs else 0.0
                for mine, theirs in zip(scores[label], scores["base"])
            ]
            rule_outcomes = [
                annotators.rule_outcome(rule, t, (g.text, g.finish_reason), (b.text, b.finish_reason))
                for t, g, b in zip(texts, gens, base)
            ]
            length = mean([len(g.text) for g in gens])
            per_policy[label] = {
                "reward_mean": mean(scores[label]),
                "reward_mean_reference": mean(scores["base"]),
                "win_rate_rm": mean(rm_outcomes),
                "rm_win_rate": win_rate(rm_outcomes),
                "win_rate_rule": mean(rule_outcomes),
                "rule_win_rate": win_rate(rule_outcomes),
                "rule": rule.name,
                "rule_score": mean(rule_scores[label]),
                "rule_score_reference": mean(rule_scores["base"]),
                "eos_rate": mean([float(g.finish_reason == "eos") for g in gens]),
                "length_chars": length,
                "length_reference": base_length,
                "length_ratio": length / base_length if base_length else None,
            }
        rows = [
            {"prompt": _prompt_str(p), **{label: responses[label][i].text for label in responses}}
            for i, p in enumerate(prompts)
        ]
        write_json(
            folder / "evaluation.json",
            {
                "policies": policies,
                "rule": rule.name,
                "results": per_policy,
                "scores": scores,
                "rule_scores": rule_scores,
                "responses": rows,
            },
        )
        return {"output_hash": _hash([per_policy, rows]), "results": per_policy}

    inputs = {
        "reward": r.done["reward"]["output_hash"],
        "ppo": _hash(ppo_hashes),
        "policies": _hash(policies),
        "prompts": _hash([i for i, _ in plan.held_out[: cfg.prompts]]),
        "rule": rule.name,  # the truth it judges by (also re-runs evaluations made before it was an input)
    }
    return r.run("evaluate", inputs, work)


def _prompt_str(content: Any) -> str:
    from rlhf.ppo import prompt_text

    return prompt_text(content)


# ---------------------------------------------------------------------------------------------
# Running rounds
# ---------------------------------------------------------------------------------------------


def pipeline_dir(name: str) -> Path:
    from rlhf.home import ensure_home

    return ensure_home() / "pipeline" / name


def run_pipeline(
    config_path: Path, round: int | None = None, progress: Progress | None = None, force: bool = False
) -> Path:
    """Run (or bring up to date) rounds 0..`round` of a pipeline; returns the round's folder.

    `progress(round, stage, status)` is called as each stage starts ("running"), is skipped
    ("skipped": up to date) or finishes ("done"); the CLI prints it. A round whose reward model did
    not show learning stops before PPO with a `WorkbenchError`, unless `force` (see the module doc)."""
    from rlhf.store import Store

    config = load_pipeline_config(Path(config_path))
    n = 0 if round is None else round
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValidationError("pipeline", [f"`round` must be a whole number >= 0, got {round!r}"])
    root = pipeline_dir(config.name)
    root.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{root / 'store.db'}")
    if store.schema_version() is None:
        store.init()
    store.require_ready()
    write_json(
        root / "config.json", {"config_file": str(config.path), "resolved": {s: config.section(s) for s in STAGES}}
    )
    rounds: list[_Round] = []
    try:
        for number in range(n + 1):
            rounds.append(_run_round(config, number, root, store, rounds, progress, force))
    finally:
        store.engine.dispose()
    return rounds[-1].dir


def _run_round(
    config: PipelineConfig,
    number: int,
    root: Path,
    store: Any,
    previous: list[_Round],
    progress: Progress | None,
    force: bool = False,
) -> _Round:
    r = _Round(config, number, root, store, progress)
    r.dir.mkdir(parents=True, exist_ok=True)
    # Round 0 starts from the configured model; round N from round N-1's PPO policy.
    if number == 0:
        policy, policy_hash = config.model, _hash(config.model)
    else:
        prev = previous[-1].done["ppo"]
        policy, policy_hash = prev["policy"], prev["output_hash"]
    _stage_prompts(r)
    plan = _prompt_plan(r)
    inputs = {"prompts": r.done["prompts"]["output_hash"], "policy": policy_hash}
    _stage_generate(r, policy, inputs, plan, r.number, required_labels=1, replace=True)
    _stage_label(r)
    _stage_export(r, [p.done["label"]["output_hash"] for p in previous] + [r.done["label"]["output_hash"]])
    _stage_reward(r)
    require_learning(_reward_facts(r)["learning"], force)
    _stage_ppo(r, policy, policy_hash, plan)
    policies = {"base": config.model}
    for p in [*previous, r]:
        policies[f"round {p.number}"] = p.done["ppo"]["policy"]
    _stage_evaluate(r, policies, [p.done["ppo"]["output_hash"] for p in [*previous, r]], plan)
    _stage_report(r, previous)
    return r


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _stage_report(r: _Round, previous: list[_Round]) -> dict[str, Any]:
    inputs = {s: r.done[s]["output_hash"] for s in ("label", "export", "reward", "ppo", "evaluate")}
    inputs["previous"] = _hash([p.done["evaluate"]["output_hash"] for p in previous])

    def work(folder: Path) -> dict[str, Any]:
        report = build_round_report(r, previous)
        write_json(r.dir / "report.json", report)
        plots = _plots(report)
        page = render_report_html(report, plots)
        (r.dir / "report.html").write_text(page, encoding="utf-8")
        pngs = _write_pngs(report, r.dir / "plots")
        write_json(folder / "report.json", report)
        return {"output_hash": _hash(report), "html": str(r.dir / "report.html"), "pngs": [str(p) for p in pngs]}

    return r.run("report", inputs, work)


def _ppo_series(run: Path) -> dict[str, list[tuple[float, float]]]:
    rows = MetricsLog(run).read()
    out: dict[str, list[tuple[float, float]]] = {}
    for key in ("objective/scores", "objective/rlhf_reward", "objective/kl", "eval/reward_mean", "eval/kl_to_ref"):
        pts = [(float(m["step"]), float(m[key])) for m in rows if isinstance(m.get(key), (int, float))]
        if pts:
            out[key] = pts
    return out


def build_round_report(r: _Round, previous: list[_Round]) -> dict[str, Any]:
    """Everything the HTML page shows, as JSON: stages, reward model, PPO curves, rounds compared."""
    reward_run = r.stage_dir("reward") / "run"
    ppo_run = r.stage_dir("ppo") / "run"
    reward_metrics = MetricsLog(reward_run).read()
    ppo_report = read_json(ppo_run / "report.json") if (ppo_run / "report.json").exists() else {}
    evaluation = r.done["evaluate"]["results"]
    facts = _reward_facts(r)
    rounds = []
    for p in [*previous, r]:
        ppo_eval = p.done["ppo"].get("eval") or {}
        ev = evaluation.get(f"round {p.number}", {})
        p_facts = facts if p is r else _reward_facts(p)
        rounds.append(
            {
                "round": p.number,
                "reward_eval_accuracy": p.done["reward"].get("eval_accuracy"),
                "reward_eval_accuracy_interval": p_facts["eval_accuracy_interval"],
                "reward_learning": p_facts["learning"].get("status"),
                "ppo_reward_gain": ppo_eval.get("reward_gain"),
                "ppo_kl_to_ref": (ppo_eval.get("policy") or {}).get("kl_to_ref"),
                "reward_mean": ev.get("reward_mean"),
                "reward_mean_base": ev.get("reward_mean_reference"),
                "rule_score": ev.get("rule_score"),
                "rule_score_base": ev.get("rule_score_reference"),
                "win_rate_vs_base_rm": ev.get("win_rate_rm"),
                "win_rate_vs_base_rm_interval": ev.get("rm_win_rate"),
                "win_rate_vs_base_rule": ev.get("win_rate_rule"),
                "win_rate_vs_base_rule_interval": ev.get("rule_win_rate"),
                "length_ratio": ev.get("length_ratio"),
            }
        )
    n_samples = r.config.evaluation.samples
    rule = annotators.get_rule(r.config.annotator.rule)
    samples = [dict(x) for x in (ppo_report.get("pairs") or [])[:n_samples]]
    if rule.kind != "length":  # a sample's finish reason is not recorded: the length rule needs it
        for x in samples:
            text = _prompt_str(x.get("prompt", ""))
            x["rule_reference"] = rule.score(text, x.get("reference") or "")
            x["rule_policy"] = rule.score(text, x.get("policy") or "")
    return {
        "pipeline": r.config.name,
        "config_file": str(r.config.path),
        "round": r.number,
        "annotator": {
            "name": r.config.annotator.name,
            "rule": rule.name,
            "rule_summary": rule.summary,
            "noise": r.config.annotator.noise,
            **{k: r.done["label"][k] for k in ("labels", "choices", "flipped")},
        },
        "stages": {
            s: {
                "seconds": r.done[s].get("seconds"),
                "key": r.done[s]["key"][:12],
                "output_hash": r.done[s]["output_hash"][:12],
            }
            for s in STAGES
            if s in r.done
        },
        "generation": r.done["generate"].get("generation"),
        "prompts": r.done["generate"].get("prompts"),  # pool / held out / this round's window
        "export": r.done["export"].get("counts"),
        "reward_model": {
            "eval_accuracy": r.done["reward"].get("eval_accuracy"),
            "eval_accuracy_before": r.done["reward"].get("eval_accuracy_before"),
            **facts,  # test_pairs, eval_accuracy_interval, eval_accuracy_before_interval, learning
            "forced": facts["learning"].get("status") != "learned",  # PPO ran on it: only with force
            "curve": {
                k: [(float(m["step"]), float(m[k])) for m in reward_metrics if isinstance(m.get(k), (int, float))]
                for k in ("accuracy", "eval_accuracy")
            },
        },
        "ppo": {
            "curves": _ppo_series(ppo_run),
            "eval": r.done["ppo"].get("eval"),
            "seconds_per_step": r.done["ppo"].get("seconds_per_step"),
            "samples": samples,
        },
        "evaluation": evaluation,
        "rounds": rounds,
    }


def svg_line_chart(
    series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, width: int = 460, height: int = 260
) -> str:
    """A small inline SVG line chart (no plotting library needed); empty series draw a note."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    pts = [p for s in series.values() for p in s]
    esc = html.escape
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
    head += f'aria-label="{esc(title)}">'
    head += f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{esc(title)}</text>'
    if not pts:
        return head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12">no data</text></svg>'
    left, right, top, bottom = 52, 12, 28, 40
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [head]
    parts.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="none" stroke="#999"/>'
    )
    for v in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="10">{v:.3g}</text>')
    for v in (x0, x1):
        parts.append(
            f'<text x="{sx(v):.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{v:.4g}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle" font-size="11">'
        f"{esc(xlabel)}</text>"
    )
    for i, (name, s) in enumerate(series.items()):
        c = colors[i % len(colors)]
        if len(s) == 1:
            parts.append(f'<circle cx="{sx(s[0][0]):.1f}" cy="{sy(s[0][1]):.1f}" r="3" fill="{c}"/>')
        else:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
            parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{path}"/>')
        parts.append(f'<text x="{left + 6}" y="{top + 14 + 13 * i}" font-size="11" fill="{c}">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def plot_series(report: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, list[tuple[float, float]]]]]:
    """The report's four plots, {name: (title, x label, {series: [(x, y)]})}: drawn as inline SVG in
    report.html and as PNG files in plots/."""
    curves = report["ppo"]["curves"]
    rm = report["reward_model"]["curve"]
    rounds = report["rounds"]

    def per_round(key: str) -> list[tuple[float, float]]:
        return [(float(x["round"]), float(x[key])) for x in rounds if isinstance(x.get(key), (int, float))]

    return {
        "reward": (
            "PPO reward",
            "PPO step",
            {k: v for k, v in curves.items() if k in ("objective/scores", "objective/rlhf_reward", "eval/reward_mean")},
        ),
        "kl": (
            "KL to the reference",
            "PPO step",
            {k: v for k, v in curves.items() if k in ("objective/kl", "eval/kl_to_ref")},
        ),
        "reward_model": ("Reward-model accuracy", "training step", {k: v for k, v in rm.items() if v}),
        "rounds": (
            "Rounds: win rate against the starting model",
            "round",
            {
                "win rate vs base (RM)": per_round("win_rate_vs_base_rm"),
                "win rate vs base (rule)": per_round("win_rate_vs_base_rule"),
            },
        ),
    }


def _plots(report: dict[str, Any]) -> dict[str, str]:
    return {name: svg_line_chart(series, title, x) for name, (title, x, series) in plot_series(report).items()}


def _write_pngs(report: dict[str, Any], out: Path) -> list[Path]:
    """The same four plots as PNG files (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (title, xlabel, series) in plot_series(report).items():
        fig, ax = plt.subplots(figsize=(5, 3))
        for label, pts in series.items():
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 3 else None, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        if any(series.values()):
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _prompts_line(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    return (
        f"<p>Prompts: this round gave candidates to {p['count']} of the {p['pool']} training prompts "
        f"(from #{p['first'] + 1} of the pool, wrapping); the last {p['held_out']} prompts are held out "
        "for evaluation: never labeled, never trained on.</p>"
    )


def _arrow(before: Any, after: Any) -> str:
    """'before -> after' of two numbers ('-' for a missing one)."""
    return f"{_fmt(before)} → {_fmt(after)}"


def _reward_up_truth_down(ev: dict[str, Any]) -> bool:
    """The reward model scores the policy above the reference while the rule scores it below."""
    keys = ("reward_mean", "reward_mean_reference", "rule_score", "rule_score_reference")
    if not all(isinstance(ev.get(k), (int, float)) for k in keys):
        return False
    return ev["reward_mean"] > ev["reward_mean_reference"] and ev["rule_score"] < ev["rule_score_reference"]


def _truth_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Per policy: the reward model's opinion beside the rule's (the truth), against the start."""
    from rlhf.stats import fmt_proportion

    rows = []
    for label, ev in evaluation.items():
        if label == "base":
            continue
        wr = ev.get("rule_win_rate") or {}
        rows.append(
            {
                "policy": label,
                "reward model score (start → policy)": _arrow(ev.get("reward_mean_reference"), ev.get("reward_mean")),
                "win rate vs start, reward model": fmt_proportion(ev.get("rm_win_rate")),
                "rule score (start → policy)": _arrow(ev.get("rule_score_reference"), ev.get("rule_score")),
                "win rate vs start, rule": fmt_proportion(ev.get("rule_win_rate")),
                "rule wins / ties / losses": f"{wr.get('wins', '-')} / {wr.get('ties', '-')} / {wr.get('losses', '-')}",
                "length, chars (start → policy)": _arrow(ev.get("length_reference"), ev.get("length_chars")),
                "length ratio": ev.get("length_ratio"),
                "ended by itself": ev.get("eos_rate"),
                "verdict": "REWARD UP, TRUTH DOWN" if _reward_up_truth_down(ev) else "",
            }
        )
    return rows


def render_report_html(report: dict[str, Any], plots: dict[str, str]) -> str:
    """One self-contained page: no external file, script or font."""
    from rlhf.stats import fmt_proportion

    esc = html.escape

    def table(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "<p>none</p>"
        cols = list(rows[0])
        head = "".join(f"<th>{esc(str(c))}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(row.get(c)))}</td>" for c in cols) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    def banner(text: str, bad: bool) -> str:
        cls, role = ("banner bad", ' role="alert"') if bad else ("banner ok", "")
        return f'<div class="{cls}"{role}>{text}</div>'

    a = report["annotator"]
    stages = [{"stage": s, **v} for s, v in report["stages"].items()]
    samples = []
    for x in report["ppo"]["samples"]:
        row = {
            "prompt": x["prompt"],
            "before (reference)": x["reference"],
            "after (policy)": x["policy"],
            "reward before": x["reward_reference"],
            "reward after": x["reward_policy"],
        }
        if "rule_reference" in x:
            row["rule before"], row["rule after"] = x["rule_reference"], x.get("rule_policy")
        samples.append(row)
    rm = report["reward_model"]
    learning = rm.get("learning") or {}
    status = learning.get("status", "unknown")
    if status == "learned":
        rm_banner = banner(f"<b>Reward model learned</b>: {esc(learning.get('message', ''))}.", bad=False)
    else:
        rm_banner = banner(
            f"<b>REWARD MODEL: {esc(status.upper().replace('_', ' '))}</b>: {esc(learning.get('message', ''))}. "
            "PPO ran on it anyway (forced): its reward gains below optimise a model that showed no learning.",
            bad=True,
        )
    evaluation = report.get("evaluation") or {}
    hacked = [label for label, ev in evaluation.items() if label != "base" and _reward_up_truth_down(ev)]
    truth_banner = ""
    if hacked:
        truth_banner = banner(
            f"<b>REWARD UP, TRUTH DOWN</b> for {esc(', '.join(hacked))}: the reward model scores the policy above "
            f"the starting model while the rule <code>{esc(a['rule'])}</code> scores it below (reward hacking, or "
            "a reward model that learned something other than the rule).",
            bad=True,
        )
    rounds = [
        {
            "round": x["round"],
            "reward model held-out accuracy": fmt_proportion(x.get("reward_eval_accuracy_interval")),
            "reward model learned": x.get("reward_learning"),
            "PPO reward gain": x.get("ppo_reward_gain"),
            "PPO KL to ref": x.get("ppo_kl_to_ref"),
            "reward model score (start → policy)": _arrow(x.get("reward_mean_base"), x.get("reward_mean")),
            "rule score (start → policy)": _arrow(x.get("rule_score_base"), x.get("rule_score")),
            "win rate vs start, reward model": fmt_proportion(x.get("win_rate_vs_base_rm_interval")),
            "win rate vs start, rule": fmt_proportion(x.get("win_rate_vs_base_rule_interval")),
        }
        for x in report["rounds"]
    ]
    body = f"""
<h1>RLHF pipeline <code>{esc(report["pipeline"])}</code>, round {report["round"]}</h1>
{rm_banner}{truth_banner}
<p>Config: <code>{esc(report["config_file"])}</code>. Labels by the <b>simulated annotator</b>
<code>{esc(a["name"])}</code> (rule <code>{esc(a["rule"])}</code>: {esc(a.get("rule_summary", ""))}; noise
{a["noise"]}): {a["labels"]} labels {esc(json.dumps(a["choices"]))}, {a["flipped"]} flipped by noise.</p>
{_prompts_line(report.get("prompts"))}
<h2>Rounds compared</h2>
<p>Each round's policy against the starting model on the held-out prompts: the reward model's opinion
beside the truth (the rule the simulated annotator labels by). Proportions: value [95% Wilson interval]
(n).</p>
{table(rounds)}
<div class="plots">{plots["rounds"]}</div>
<h2>Truth vs reward model</h2>{table(_truth_rows(evaluation))}
<h2>Reward model</h2><p>Held-out accuracy {esc(fmt_proportion(rm.get("eval_accuracy_interval")))}
(untrained head on the same pairs: {esc(fmt_proportion(rm.get("eval_accuracy_before_interval")))}).
Verdict: <b>{esc(status)}</b>. Export: {esc(json.dumps(report["export"]))}</p>
<div class="plots">{plots["reward_model"]}</div>
<h2>PPO</h2><p>Median seconds per step: {_fmt(report["ppo"]["seconds_per_step"])}.</p>
<div class="plots">{plots["reward"]}{plots["kl"]}</div>
<h2>Before / after samples</h2>{table(samples)}
<h2>Stages</h2>{table(stages)}
"""
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
        "vertical-align:top;max-width:320px;white-space:pre-wrap}.plots svg{margin:4px;border:1px solid #eee}"
        ".banner{padding:10px 14px;margin:10px 0;border-radius:4px;font-size:15px}"
        ".banner.bad{background:#c62828;color:#fff}.banner.ok{background:#e8f5e9;border:1px solid #66bb6a}"
    )
    title = f"RLHF round {report['round']}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>"
        f"<body>{body}</body></html>"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


# ---------------------------------------------------------------------------------------------
# Rounds with people: the data home's store, labeled in the app
# ---------------------------------------------------------------------------------------------


def store_rounds_dir() -> Path:
    """`<RLHF_HOME>/rounds`: one folder per closed labeling round of the data home's store."""
    from rlhf.home import ensure_home

    return ensure_home() / "rounds"


def labeled_round(store: Any) -> tuple[int | None, int]:
    """(the newest round that has a submitted label, submitted labels in all rounds)."""
    from sqlalchemy import func, select

    from rlhf.schema import Comparison, Label

    with store.session() as s:
        q = select(func.max(Comparison.round), func.count(Label.id)).join(Label, Label.comparison_id == Comparison.id)
        newest, count = s.execute(q.where(Label.status == "submitted")).one()
    return newest, int(count or 0)


def _all_labels_hash(store: Any) -> str:
    from sqlalchemy import select

    from rlhf.schema import Label

    with store.session() as s:
        q = select(Label.comparison_id, Label.annotator_id, Label.choice, Label.strength).where(
            Label.status == "submitted"
        )
        return _hash(sorted(list(map(list, s.execute(q).all())), key=lambda x: (x[0], x[1])))


def store_round_problems(config: PipelineConfig, store: Any, root: Path | None = None) -> list[str]:
    """Why `run_store_round` with this config cannot start now (every reason), before any work."""
    number, _ = labeled_round(store)
    if number is None:
        return [
            "no labels yet: annotators label on the Label page first (candidates come from the Project page "
            "or `rlhf generate`)"
        ]
    summary = (root or store_rounds_dir()) / f"round-{number - 1}" / "round.json"
    if number > 0 and summary.exists():
        prev = read_json(summary)
        if prev.get("model") not in (None, config.model):
            before, used = number - 1, prev["model"]
            return [
                f"round {before} was closed with generation.model {used!r} "
                f"({Path(prev.get('config_file', '?')).name}), this config has {config.model!r}: round {number} "
                f"starts PPO from round {before}'s policy, and the policy and the reward model must come from "
                f"the same base model. Use a config with generation.model {used!r}"
            ]
    return []


def _previous_policy(root: Path, number: int, config: PipelineConfig) -> tuple[str, str]:
    """Round N starts from round N-1's PPO policy when round N-1 was closed here, else the config's model."""
    record = root / f"round-{number - 1}" / f"{STAGES.index('ppo') + 1}-ppo" / "stage.json"
    if number > 0 and record.exists():
        prev = read_json(record)
        if Path(prev["policy"], "config.json").exists():
            return prev["policy"], prev["output_hash"]
    return config.model, _hash(config.model)


def run_store_round(
    config_path: Path, store: Any | None = None, progress: Progress | None = None, force: bool = False
) -> Path:
    """Close the labeling round of the data home's store (what annotators label in the app) and open
    the next: export every label so far, train the reward model, run PPO from the previous round's
    policy (round 0: `generation.model`), then give the pool's next `generation.limit` prompts
    candidates from the tuned policy as round N+1 (they appear in the annotators' queues).

    N is the newest round with a submitted label. The config is a pipeline YAML (its `generation`,
    `export`, `reward`, `ppo` sections and the held-out counts; `prompts` and `annotator` are not
    used: the prompts and labels are the store's). Writes `<RLHF_HOME>/rounds/round-<N>/` with
    `4-export/ 5-reward/run 6-ppo/run 2-generate/` (the next round's candidates) and `round.json`.
    Stages are skipped when their inputs are unchanged, so a click after new labels re-trains and a
    click after a crash resumes at the stage that did not finish. Nothing already stored is deleted.
    A reward model that did not show learning stops the round before PPO (a `WorkbenchError`: the
    verdict's message plus "; pass --force to run PPO anyway"), unless `force`."""
    from rlhf.store import Store

    config = load_pipeline_config(Path(config_path))
    store = store or Store()
    store.require_ready()
    root = store_rounds_dir()
    if problems := store_round_problems(config, store, root):
        raise ValidationError("closing the round", problems)
    number, n_labels = labeled_round(store)
    assert number is not None
    r = _Round(config, number, root, store, progress)
    r.dir.mkdir(parents=True, exist_ok=True)
    policy, policy_hash = _previous_policy(root, number, config)
    _stage_export(r, [_all_labels_hash(store)])
    _stage_reward(r)
    facts = _reward_facts(r)
    require_learning(facts["learning"], force)
    plan = _prompt_plan(r)
    _stage_ppo(r, policy, policy_hash, plan)
    # Round N+1's candidates from round N's tuned policy, into the annotators' queues.
    _stage_generate(r, r.done["ppo"]["policy"], {"ppo": r.done["ppo"]["output_hash"]}, plan, number + 1)
    ppo = r.done["ppo"]
    write_json(
        r.dir / "round.json",
        {
            "round": number,
            "config_file": str(config.path),
            "model": config.model,
            "labels": n_labels,
            "export": r.done["export"].get("counts"),
            "reward_eval_accuracy": r.done["reward"].get("eval_accuracy"),
            "reward_eval_accuracy_before": r.done["reward"].get("eval_accuracy_before"),
            "reward_eval_accuracy_interval": facts["eval_accuracy_interval"],
            "reward_learning": facts["learning"],
            "forced": force and facts["learning"].get("status") != "learned",
            "reward_run": str(r.stage_dir("reward") / "run"),
            "policy_start": policy,
            "policy": ppo["policy"],
            "ppo_run": str(r.stage_dir("ppo") / "run"),
            "ppo_eval": ppo.get("eval"),
            "next_round": number + 1,
            "next_round_comparisons": r.done["generate"]["comparisons"],
            "stages": {s: round(v.get("seconds") or 0.0, 1) for s, v in r.done.items()},
        },
    )
    return r.dir
