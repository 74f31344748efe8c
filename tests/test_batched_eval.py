"""Resident and batched evaluation: one model per process, positions swapped in place, several
particles per mixed-adapter batch, and the same utilities whichever way a position is evaluated.

The model side uses a tiny random Llama with a character tokenizer (prompts of many lengths, so
batches of several widths) and LoRA experts saved by peft; the engine side uses the real
databases, with the real model or with a closed-form utility where only the bookkeeping matters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from searches import closed_form, distance, make_pool
from sqlalchemy import select

from swarmq.config import SearchConfig, parse_config
from swarmq.engine import create_search, run_evaluation, utility_histories
from swarmq.engine._runtime import model_evaluate
from swarmq.errors import UtilityError
from swarmq.execution import EmbeddedRunner
from swarmq.modeling import Evaluator, clear_evaluators, get_evaluator
from swarmq.modeling import _evaluator as evaluator_module
from swarmq.modeling._resident import ResidentModel
from swarmq.objectives import (
    TextGenerator,
    Utility,
    UtilityResult,
    build_prompt,
    register_utility,
)
from swarmq.settings import Settings
from swarmq.storage import EvaluationRow
from swarmq.testing import (
    char_tokenizer,
    model_config,
    save_lora_experts,
    save_tiny_llama,
    write_mc_dataset,
)
from swarmq.weights import Layout, export_adapter

QUESTIONS = [
    ("Capital of France?", {"A": "London", "B": "Paris", "C": "Rome", "D": "Berlin"}, "B"),
    ("2 + 2 = ?", {"A": "3", "B": "4", "C": "5", "D": "22"}, "B"),
    ("Largest planet of the solar system?", {"A": "Mars", "B": "Jupiter", "C": "Io"}, "B"),
    ("Water freezes at?", {"A": "0 C", "B": "50 C", "C": "100 C", "D": "-40 C"}, "A"),
    ("Color of a clear sky?", {"A": "green", "B": "red", "C": "yellow", "D": "blue"}, "D"),
    ("Opposite of up?", {"A": "left", "B": "down"}, "B"),
    ("Which one is a fruit, not a vegetable?", {"A": "leek", "B": "apple", "C": "kale"}, "B"),
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@register_utility("test_batched_probe")
class Probe(Utility):
    """Every kind of model call a shared batch serves, with all outputs kept for comparison.

    Two generation rounds (the second's prompts are built from each particle's own first
    answers, so particles send prompts of different lengths), a chat round, and a
    log-likelihood call (served per particle).
    """

    example_keys: ClassVar[tuple[str, ...]] = ("question", "choices", "answer")

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        prompts = [build_prompt(ex["question"], ex["choices"]) for ex in examples]
        first = generator.generate(prompts, 6)
        second = generator.generate(
            [f"{p} {a.strip()}\nAre you sure?" for p, a in zip(prompts, first, strict=True)], 4
        )
        chat = generator.generate_chat(prompts[:3], 5)  # type: ignore[attr-defined]
        ll = generator.loglikelihood(  # type: ignore[attr-defined]
            prompts, [f" {ex['answer']}" for ex in examples]
        )
        value = float(np.mean(ll)) + sum("A" in s for s in second)
        # Judge and reward models of a utility default to the evaluated model's device.
        device = getattr(generator, "device", None)
        return UtilityResult(
            value, {"first": first, "second": second, "chat": chat, "ll": ll, "device": device}
        )


# ---------------------------------------------------------------------------- the tiny world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A base model folder, four LoRA experts, five positions (experts and mixes), datasets."""
    root = tmp_path_factory.mktemp("batched")
    base = save_tiny_llama(root / "base", char_tokenizer(CHAT_TEMPLATE))
    seeds = {f"expert_{k}": 10 + k for k in range(4)}
    # Scaled up: large enough that experts answer differently.
    pool = save_lora_experts(base, root / "experts", seeds, scale=3.0)
    layout, adapter_config = pool.layout, pool.adapter_config
    vectors = [*pool.vectors, (0.6 * pool.vectors[0] + 0.4 * pool.vectors[3]).astype(np.float32)]
    mc = write_mc_dataset(root / "mc.json", QUESTIONS)
    return {
        "root": root,
        "base": base,
        "layout": layout,
        "vectors": vectors,
        "adapter_config": adapter_config,
        "mc": mc,
    }


def make_config(world: dict[str, Any], **objective: Any) -> SearchConfig:
    defaults = {
        "utility": "multiple_choice",
        "dataset": str(world["mc"]),
        "batch_size": 3,
        "options": {"max_new_tokens": 6},
    }
    return model_config(world["root"] / "experts", world["base"], **(defaults | objective))


@pytest.fixture(autouse=True)
def _empty_cache() -> Any:
    yield
    clear_evaluators()


class FreshModel:
    """The reference: the base model loaded anew with ``PeftModel.from_pretrained`` of an
    exported adapter folder, each prompt generated alone (no padding, peft's plain forward)."""

    def __init__(self, base: Path, adapter: Path) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base), adapter
        ).eval()

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        tok: Any = self.tokenizer
        out: list[str] = []
        with torch.inference_mode():
            for prompt in prompts:
                ids = tok(prompt, return_tensors="pt").input_ids
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
                out.append(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
        return out


# ---------------------------------------------------------------------------- identity


def test_swapped_batched_and_fresh_evaluations_are_identical(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The same utility and the same texts, whether a position is swapped into the resident
    model alone, scored in mixed-adapter batches of any size, or loaded from disk anew.

    Why this holds exactly and not only approximately (float32 on the CPU): in a mixed batch
    each particle's rows are the very batches its single evaluation forms (same prompts, order,
    width and left padding: ResidentModel.generate_mixed), its LoRA term is the same float32
    product (peft's per-row routing is used for single evaluations too), and the dense layers
    compute each row independently of the others. The one kernel that reduces differently with
    the batch size is PyTorch's CPU attention for one-token decoding steps (it splits its work
    by batch size and thread count), which moves logits by about 1e-7: a greedy choice changes
    only at a near-tie that close, and none occurs here (the fresh model, unpadded and one
    prompt at a time, agrees as well).
    """
    layout, vectors = world["layout"], world["vectors"]
    single = Evaluator(make_config(world), world["adapter_config"])
    prompts = single.utility.prompts(single.examples("dev"))  # type: ignore[attr-defined]
    alone, texts = [], []
    for v in vectors:
        alone.append(single.evaluate(layout, v))
        texts.append(single.generate(prompts, 8))
    assert len({r.value for r in alone}) > 1, "positions should score differently"
    assert len({tuple(t) for t in texts}) == len(vectors)

    for k in (3, 5):  # groups of 3 + 2, and all five together
        batched = Evaluator(
            make_config(world, particles_per_batch=k),
            world["adapter_config"],
            resident=single._resident,  # the same resident model, now with k slots
        )
        assert batched.evaluate_many(layout, vectors) == alone
    # Texts through the mixed call directly: every position at once, against each alone.
    resident = single._resident
    resident.ensure_slots(len(vectors))
    for slot, v in enumerate(vectors):
        resident.set_position(layout, v, slot=slot)
    mixed = resident.generate_mixed([(slot, prompts) for slot in range(len(vectors))], 8, 3)
    assert mixed == texts

    for i, v in enumerate(vectors):
        folder = export_adapter(layout, v, tmp_path / f"p{i}", world["adapter_config"])
        fresh = FreshModel(world["base"], folder)
        assert fresh.generate(prompts, 8) == texts[i]
        assert single.utility.score(fresh, single.examples("dev")) == alone[i]


def test_every_kind_of_call_is_served_per_particle(world: dict[str, Any]) -> None:
    """Prompts that depend on each particle's answers, chat prompts and log-likelihoods."""
    layout, vectors = world["layout"], world["vectors"]
    config = make_config(world, utility="test_batched_probe", options={}, particles_per_batch=4)
    ev = Evaluator(config, world["adapter_config"])
    alone = [ev.evaluate(layout, v) for v in vectors]
    seconds = {tuple(r.metrics["second"]) for r in alone}
    assert alone[0].metrics["device"] == "cpu"
    assert len(seconds) > 1  # the second round's prompts differ between particles
    assert ev.evaluate_many(layout, vectors) == alone
    assert ev.evaluate_many(layout, vectors[::-1]) == alone[::-1]  # other company, same answers


def test_adapter_slots_leave_single_evaluations_alone(world: dict[str, Any]) -> None:
    layout, (v0, v1, *_) = world["layout"], world["vectors"]
    ev = Evaluator(make_config(world), world["adapter_config"])
    before = ev.evaluate(layout, v0)
    resident = ev._resident
    resident.ensure_slots(2)
    resident.set_position(layout, v1, slot=0)
    resident.set_position(layout, v1, slot=1)
    assert resident.slots == 2 and not resident.model.training  # no dropout in new slots
    assert ev.evaluate(layout, v0) == before
    ev.set_position(layout, v0)
    prompts = ev.utility.prompts(ev.examples("dev"))  # type: ignore[attr-defined]
    assert resident.generate_mixed([(1, prompts)], 6, 3) != ev.generate(prompts, 6)
    with pytest.raises(Exception, match="slot 7 does not exist"):
        resident.set_position(layout, v0, slot=7)


def test_full_weight_pools_are_evaluated_one_at_a_time(world: dict[str, Any]) -> None:
    ev = Evaluator(make_config(world, particles_per_batch=4), None)
    assert ev.particles_per_batch == 1
    params = dict(ev._resident.model.state_dict())
    key = "model.layers.0.self_attn.q_proj.weight"
    layout = Layout.from_shapes({key: (tuple(params[key].shape), "F32")})
    base = params[key].numpy().ravel().copy()
    moved = (base + np.random.default_rng(0).normal(0, 0.5, base.shape)).astype(np.float32)
    assert ev.evaluate_many(layout, [base, moved]) == [
        ev.evaluate(layout, base),
        ev.evaluate(layout, moved),
    ]
    with pytest.raises(Exception, match="LoRA pool"):
        ev._resident.ensure_slots(2)


def test_a_utility_error_in_one_particle_stops_the_batch_cleanly(world: dict[str, Any]) -> None:
    config = make_config(world, utility="test_batched_probe", options={}, particles_per_batch=3)
    ev = Evaluator(config, world["adapter_config"])
    bad = world["vectors"][1].copy()
    bad[:] = np.nan  # NaN weights: log-likelihoods are NaN, the utility value is refused
    with pytest.raises(UtilityError, match="finite"):
        ev.evaluate_many(world["layout"], [world["vectors"][0], bad, world["vectors"][2]])
    # The model is still usable afterwards (no thread left waiting, no lock left held).
    assert ev.evaluate_many(world["layout"], world["vectors"][:2]) == [
        ev.evaluate(world["layout"], v) for v in world["vectors"][:2]
    ]


# ---------------------------------------------------------------------------- resident model


def test_base_model_is_loaded_once_per_process_and_updated_in_place(
    world: dict[str, Any],
) -> None:
    config = make_config(world)
    assert not evaluator_module._MODELS  # nothing is loaded before the first evaluation
    first = model_evaluate(
        config, world["adapter_config"], world["layout"], world["vectors"][0], "dev"
    )
    assert len(evaluator_module._MODELS) == 1
    resident: ResidentModel = next(iter(evaluator_module._MODELS.values()))
    pointers = {k: t.data_ptr() for k, t in resident.targets.items()}
    weights = {n: p.data_ptr() for n, p in resident.model.named_parameters()}
    others = model_evaluate.many(
        make_config(world, particles_per_batch=3),
        world["adapter_config"],
        world["layout"],
        world["vectors"][1:4],
        "dev",
    )
    assert len(others) == 3
    assert next(iter(evaluator_module._MODELS.values())) is resident  # same model, not reloaded
    assert {k: t.data_ptr() for k, t in resident.targets.items()} == pointers
    now = {n: p.data_ptr() for n, p in resident.model.named_parameters()}
    assert {n: now[n] for n in weights} == weights  # slots were added, nothing was replaced
    again = model_evaluate(
        config, world["adapter_config"], world["layout"], world["vectors"][0], "dev"
    )
    assert again == first
    assert get_evaluator(config, world["adapter_config"])._resident is resident


# ---------------------------------------------------------------------------- the engine


class BatchingHook:
    """A closed-form evaluation hook with a ``many`` method that logs each call's batch."""

    def __init__(self, delay: float = 0.0, fail: str | None = None) -> None:
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail
        self._lock = threading.Lock()

    def __call__(
        self, config: Any, adapter: Any, layout: Any, vector: np.ndarray, split: str
    ) -> tuple[float, dict[str, Any]]:
        return self.many(config, adapter, layout, [vector], split)[0]

    def many(
        self, config: Any, adapter: Any, layout: Any, vectors: list[np.ndarray], split: str
    ) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            self.calls.append(len(vectors))
        time.sleep(self.delay)
        if self.fail == "batch" and len(vectors) > 1:
            raise RuntimeError("the GPU fell off the bus")
        values = [distance(v) for v in vectors]
        if self.fail == "nan" and len(vectors) > 1:
            values[-1] = float("nan")
        return [(v, {"split": split}) for v in values]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pool(tmp_path_factory.mktemp("pool"))


def pool_config(pool: Path, per_batch: int, **search: Any) -> SearchConfig:
    search = {"max_iterations": 5} | search
    return closed_form(pool, objective={"particles_per_batch": per_batch}, **search)


def _rows(runner: EmbeddedRunner, sid: str, iteration: int = 0) -> dict[int, EvaluationRow]:
    with runner.runtime.db.session() as s:
        rows = s.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid,
                EvaluationRow.iteration == iteration,
                EvaluationRow.split == "dev",
            )
        ).all()
        return {r.particle: r for r in rows}


def test_one_task_claims_and_records_pending_companions(
    url: str, tmp_path: Path, pool: Path
) -> None:
    hook = BatchingHook()
    runner = EmbeddedRunner(Settings(url, tmp_path / "art"), evaluate=hook)
    rt = runner.runtime
    sid = create_search(rt, pool_config(pool, 3), check_objective=False)
    first = run_evaluation(rt, sid, 0, 0)
    assert (first.status, first.batch) == ("done", (1, 2))
    rows = _rows(runner, sid)
    assert {p for p, r in rows.items() if r.status == "done"} == {0, 1, 2}
    assert all(rows[p].attempts == 1 and rows[p].worker for p in (0, 1, 2))
    assert rows[1].utility == pytest.approx(distance(rt.store.get_vector(rows[1].position_hash)))
    # The companions' own messages are no-ops; the next pending particle takes the next batch.
    assert run_evaluation(rt, sid, 0, 2).status == "duplicate"
    assert run_evaluation(rt, sid, 0, 4).batch == (3, 5)
    assert run_evaluation(rt, sid, 0, 6).batch == ()  # nothing left to share with
    assert hook.calls == [3, 3, 1]
    # The last record saw the iteration complete and asked for exactly one coordination.
    assert [m for m in runner.queue.messages if m[0] == "swarmq.coordinate"] == [
        ("swarmq.coordinate", {"search_id": sid, "iteration": 0})
    ]


def test_the_celery_task_reports_its_companions(tmp_path: Path, pool: Path) -> None:
    from swarmq.engine import runtime_installed
    from swarmq.execution.tasks import evaluate

    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=BatchingHook()
    )
    sid = create_search(runner.runtime, pool_config(pool, 3), check_objective=False)
    with runtime_installed(runner.runtime):  # what a worker process has installed
        first = evaluate.run(sid, 0, 0)
        assert first["status"] == "done" and first["batch"] == [1, 2]
        assert isinstance(first["utility"], float)
        again = evaluate.run(sid, 0, 1)  # a companion's own message: already recorded
        assert (again["status"], again["batch"]) == ("duplicate", [])


def test_a_companion_held_by_a_live_worker_is_left_alone(tmp_path: Path, pool: Path) -> None:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=BatchingHook()
    )
    rt = runner.runtime
    sid = create_search(rt, pool_config(pool, 3), check_objective=False)
    seen: list[str] = []

    class Nested(BatchingHook):
        def many(self, *args: Any) -> list[tuple[float, dict[str, Any]]]:
            if not seen:  # while this batch runs, particle 1's own message arrives
                seen.append(run_evaluation(rt, sid, 0, 1).status)
            return super().many(*args)

    out = run_evaluation(rt, sid, 0, 0, worker="elsewhere:1", evaluate=Nested())
    assert seen == ["busy"] and out.batch == (1, 2)


def test_batched_search_records_what_an_unbatched_one_does(
    url: str, tmp_path: Path, pool: Path
) -> None:
    histories = []
    for k in (1, 3, 7):
        runner = EmbeddedRunner(Settings(url, tmp_path / f"art{k}"), evaluate=BatchingHook())
        sid = create_search(runner.runtime, pool_config(pool, k), check_objective=False)
        runner.drive(sid)
        histories.append(utility_histories(runner.runtime.db, sid))
    assert histories[0] == histories[1] == histories[2]


def test_concurrent_claims_never_share_a_row(tmp_path: Path, pool: Path, postgres_url: str) -> None:
    hook = BatchingHook(delay=0.3)
    runner = EmbeddedRunner(Settings(postgres_url, tmp_path / "art"), evaluate=hook)
    rt = runner.runtime
    sid = create_search(rt, pool_config(pool, 3), check_objective=False)
    start = threading.Barrier(3)
    outcomes: dict[int, Any] = {}

    def work(particle: int) -> None:
        start.wait()
        outcomes[particle] = run_evaluation(rt, sid, 0, particle, worker=f"w{particle}:1")

    threads = [threading.Thread(target=work, args=(p,)) for p in (0, 1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    evaluated = [p for p, o in outcomes.items() if o.status == "done" for p in (p, *o.batch)]
    assert len(evaluated) == len(set(evaluated))  # no particle evaluated twice
    rows = _rows(runner, sid)
    for p in evaluated:
        assert rows[p].status == "done" and rows[p].attempts == 1
    # Whatever the claims left (a message that found its row held) is done by its own message.
    for p in range(7):
        run_evaluation(rt, sid, 0, p)
    assert all(r.status == "done" and r.attempts == 1 for r in _rows(runner, sid).values())


def test_errors_are_recorded_on_each_claimed_row(tmp_path: Path, pool: Path) -> None:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=BatchingHook()
    )
    rt = runner.runtime
    sid = create_search(rt, pool_config(pool, 3), check_objective=False)
    with pytest.raises(RuntimeError, match="fell off"):
        run_evaluation(rt, sid, 0, 0, evaluate=BatchingHook(fail="batch"))
    rows = _rows(runner, sid)
    for p in (0, 1, 2):
        assert rows[p].status == "failed" and "fell off" in (rows[p].error or "")
    # A failed row is not "pending": only its own message (or resume) runs it again.
    retried = run_evaluation(rt, sid, 0, 1)
    assert retried.status == "done" and retried.batch == (3, 4)
    rows = _rows(runner, sid)
    assert (rows[1].attempts, rows[3].attempts, rows[0].status) == (2, 1, "failed")

    # A non-finite utility fails its own row (and the search), not its companions.
    out = run_evaluation(rt, sid, 0, 0, evaluate=BatchingHook(fail="nan"))
    rows = _rows(runner, sid)
    assert out.status == "done" and out.batch == (5, 6)
    assert rows[0].status == rows[5].status == "done" and rows[6].status == "failed"
    assert "finite" in (rows[6].error or "")


def test_a_batched_search_on_the_real_model_matches_an_unbatched_one(
    tiny_world: dict[str, Path], tmp_path: Path
) -> None:
    histories = []
    for k in (1, 3):
        config = parse_config(
            {
                "search": {"seed": 2, "particles": 5, "max_iterations": 1},
                "experts": {"path": str(tiny_world["experts"])},
                "base_model": {"path": str(tiny_world["base"]), "device": "cpu"},
                "objective": {
                    "utility": "multiple_choice",
                    "dataset": str(tiny_world["dataset"]),
                    "batch_size": 4,
                    "max_new_tokens": 2,
                    "dev_limit": 8,
                    "test_limit": 4,
                    "particles_per_batch": k,
                },
                "swarm": {"patience": 3},
            }
        )
        runner = EmbeddedRunner(
            Settings(f"sqlite:///{tmp_path / f'{k}.sqlite'}", tmp_path / f"a{k}")
        )
        sid = create_search(runner.runtime, config)
        runner.drive(sid)
        histories.append(utility_histories(runner.runtime.db, sid))
        with runner.runtime.db.session() as s:
            metrics = [
                r.metrics
                for r in s.scalars(
                    select(EvaluationRow)
                    .where(EvaluationRow.search_id == sid)
                    .order_by(EvaluationRow.iteration, EvaluationRow.particle, EvaluationRow.split)
                )
            ]
        histories.append(metrics)  # type: ignore[arg-type]
        # The worker's one resident model served the batches from adapter slots (K = 3).
        (resident,) = evaluator_module._MODELS.values()
        assert resident.slots == (0 if k == 1 else 3)
    assert histories[0] == histories[2] and histories[1] == histories[3]
    assert len({u for h in histories[0] for u in h}) > 1
