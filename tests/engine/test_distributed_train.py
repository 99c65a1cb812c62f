"""Training with 2 gloo processes on CPU, end to end, on the tiny LT-Shapes: a LOCE-style phase (local
MFS memory, global mean score, memory warm-up) and a RIO-style phase (RFS, local object replay).

One uninterrupted run, and one run stopped by a preemption signal (SIGUSR2 on rank 1 only) in the
middle of each phase and resumed with ``resume=True`` each time. Afterwards: global stores and
indicators are identical on both ranks, local stores differ between ranks, every rank's own state is in
the checkpoint's files, and the interrupted-and-resumed run ends in exactly the state of the
uninterrupted one, on every rank (weights, every buffer, RNG).
"""

import os
import shutil
import signal

import pytest
import torch
import torch.multiprocessing as mp

from ltdet2.engine.checkpoint import rank_state_file

from fixtures.distributed import free_port
from fixtures.models import ROOT, TINY_LT_SHAPES

PROJECT = os.path.join(ROOT, "tests", "configs", "tiny_distributed.py")
WORLD_SIZE = 2
STOP_AT = {"loce": 1, "rio": 2}  # the iteration after which rank 1 receives SIGUSR2
LOCAL = {"loce": "roi_heads.feature_sources.0.queue.", "rio": "roi_heads.feature_sources.0.queue."}
GLOBAL = {"loce": "roi_heads.indicators.mean_score."}


def _worker(rank, port, data_root, out, states):
    from ltdet2.data import register_lt_shapes
    from ltdet2.engine import launch, phases, train_loop
    from ltdet2.engine.phases import load_config, run_phases

    torch.set_num_threads(1)
    register_lt_shapes(root=data_root, seed=3, spec=TINY_LT_SHAPES, name_prefix="lt_shapes_e2e")
    launch.init_process_group(
        rank=rank,
        world_size=WORLD_SIZE,
        local_rank=rank,
        local_world_size=WORLD_SIZE,
        dist_url=f"tcp://127.0.0.1:{port}",
        use_gpu=False,
    )
    launch.arm_stop_signal()

    current = {}
    train = phases.do_train

    def do_train(cfg, *, resume=False):  # keeps each rank's final state of each phase
        run, current["phase"] = cfg.train.output_dir.split(os.sep)[-2:]
        model = train(cfg, resume=resume)
        state = {k: v.clone() for k, v in getattr(model, "module", model).state_dict().items()}
        torch.save(state, os.path.join(states, f"{run}_{current['phase']}_rank{rank}.pt"))
        return model

    run_step = train_loop.Trainer.run_step
    stop_at = dict(STOP_AT)

    def interrupted_run_step(self):
        run_step(self)
        if rank == 1 and stop_at.get(current["phase"]) == self.iter:
            del stop_at[current["phase"]]
            os.kill(os.getpid(), signal.SIGUSR2)  # as Slurm warns of a preemption: on one rank

    phases.do_train = do_train
    try:
        cfg = lambda run: load_config(PROJECT, [f"train.output_dir={os.path.join(os.path.dirname(out), run)}"])  # noqa: E731
        run_phases(cfg("uninterrupted"))
        train_loop.Trainer.run_step = interrupted_run_step
        stops = []
        for _ in range(len(STOP_AT) + 1):
            try:
                run_phases(cfg("interrupted"), resume=True)
                break
            except launch.TrainingInterrupted as stopped:
                stops.append((current["phase"], stopped.iteration, stopped.checkpoint))
                launch.disarm_stop_requests()
                launch.arm_stop_signal()
        torch.save(stops, os.path.join(states, f"stops_rank{rank}.pt"))
    finally:
        launch.close_process_group()  # collects the interrupted runs' DDP models first


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset):
    """Both runs; returns (runs folder, states folder)."""
    from detectron2.data import MetadataCatalog

    root = tmp_path_factory.mktemp("distributed")
    states = root / "states"
    states.mkdir()
    data_root = MetadataCatalog.get(tiny_dataset[0]).image_root
    mp.spawn(_worker, args=(free_port(), data_root, str(root / "run"), str(states)), nprocs=WORLD_SIZE)
    return root, states


def final_state(states, run, phase, rank):
    return torch.load(os.path.join(states, f"{run}_{phase}_rank{rank}.pt"), weights_only=False)


@pytest.mark.parametrize("phase", ["loce", "rio"])
def test_global_stores_agree_and_local_stores_are_each_ranks_own(runs, phase):
    _, states = runs
    rank0, rank1 = (final_state(states, "uninterrupted", phase, r) for r in range(WORLD_SIZE))
    local = [k for k in rank0 if k.startswith(LOCAL[phase])]
    assert len(local) >= 3 and any(not torch.equal(rank0[k], rank1[k]) for k in local)
    assert rank0[LOCAL[phase] + "fill_counts"].sum() > 0 and rank1[LOCAL[phase] + "fill_counts"].sum() > 0
    shared = [k for k in rank0 if k.startswith(GLOBAL.get(phase, "-")) or "." not in k or k.endswith("weight")]
    assert len(shared) > 10
    for key in shared:  # global indicators and the (DDP-synchronised) weights
        assert torch.equal(rank0[key], rank1[key]), key
    if phase == "loce":
        assert (rank0[GLOBAL[phase] + "mean_scores"][:-1] != 0.01).any()  # updated, identically


def test_a_stop_saves_every_ranks_state_in_the_checkpoint(runs):
    root, states = runs
    stops = [torch.load(os.path.join(states, f"stops_rank{r}.pt"), weights_only=False) for r in range(WORLD_SIZE)]
    assert stops[0] == stops[1]  # both ranks stopped at the same iteration (the signal reached rank 1 only)
    assert [(phase, iteration) for phase, iteration, _ in stops[0]] == list(STOP_AT.items())
    for phase, iteration, checkpoint in stops[0]:
        assert checkpoint == os.path.join(root, "interrupted", phase, f"model_{iteration:07d}.pth")
        saved = torch.load(checkpoint, weights_only=False)
        own = torch.load(rank_state_file(checkpoint, 1), weights_only=False)
        assert saved["iteration"] == iteration and saved["rank_state"]["world_size"] == WORLD_SIZE
        assert own["rank"] == 1 and not any(k.startswith(GLOBAL.get(phase, "-")) for k in own["buffers"])
        local = [k for k in own["buffers"] if k.startswith(LOCAL[phase])]
        assert local and any(not torch.equal(own["buffers"][k], saved["model"][k]) for k in local)


@pytest.mark.parametrize("phase", ["loce", "rio"])
def test_interrupted_and_resumed_run_ends_as_the_uninterrupted_one_on_every_rank(runs, phase):
    root, states = runs
    for rank in range(WORLD_SIZE):
        expected = final_state(states, "uninterrupted", phase, rank)
        resumed = final_state(states, "interrupted", phase, rank)
        assert expected.keys() == resumed.keys()
        different = [k for k in expected if not torch.equal(expected[k], resumed[k])]
        assert different == [], f"rank {rank}: {different[:5]}"
    # the final checkpoints' files too: rank 0's RNG in the checkpoint, rank 1's RNG and buffers in its file
    final = {run: os.path.join(root, run, phase, "model_final.pth") for run in ("uninterrupted", "interrupted")}
    a, b = (torch.load(path, weights_only=False)["rank_state"] for path in final.values())
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and a["rng"]["numpy"][2] == b["rng"]["numpy"][2]
    a, b = (torch.load(rank_state_file(path, 1), weights_only=False) for path in final.values())
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and a["buffers"].keys() == b["buffers"].keys()


def test_resuming_local_memories_with_another_number_of_processes_is_refused(runs, tmp_path):
    from detectron2.config import instantiate

    from ltdet2.engine.checkpoint import AtomicCheckpointer
    from ltdet2.engine.phases import load_config

    root, _ = runs
    checkpoint = os.path.join(root, "interrupted", "loce", f"model_{STOP_AT['loce']:07d}.pth")
    shutil.copy(checkpoint, tmp_path)
    (tmp_path / "last_checkpoint").write_text(os.path.basename(checkpoint))
    model = instantiate(load_config(PROJECT).phases.loce.model)
    with pytest.raises(
        ValueError,
        match=r"cannot resume .*model_0000001.pth with 1 processes: it was saved by 2, and the local memories "
        r"\['roi_heads.feature_sources.0.queue'\] hold one state per process.*Resume with 2 processes",
    ):
        AtomicCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
