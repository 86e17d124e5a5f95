"""The run state: what a checkpoint holds and how a resume puts it back, in one place.

[`RunState`][] keeps the loop's counters beside the live objects of a run (agent, replay
buffer, evaluation environment). [`RunState.save`][] writes them as one checkpoint;
[`RunState.restore`][] reads one back, and [`RunState.restore_collection`][] puts the freshly
built collector and the random generators where the checkpoint found them. A checkpoint's
state holds:

- `frames`: the frames collected;
- `agent`: networks, target networks, optimisers, temperature and update count
  (`Agent.state_dict`);
- `buffer`: the replay buffer's filled rows and the rest of TorchRL's
  `ReplayBuffer.state_dict()`: writer cursor and count, sampler, batch size ([`buffer_state`][]);
- `loop`: the next evaluation and checkpoint, the fractional update debt of
  `optim.utd_ratio`, the last losses (logged until the next update), the last evaluation;
- `eval_env`: the evaluation environment's reset count;
- `collector`: the episode in progress and what the collector carries into its next step
  ([`collector_state`][]);
- `identity`: the fields that define the run
  ([`run_identity`][dqs_torchrl.experiments.harness.rundir.run_identity]);
- `rng`: the Python, NumPy, torch and (when in use) CUDA generators, as TorchRL's
  `torchrl.checkpoint.GlobalRNGState` captures them;
- `version`: the layout, [`VERSION`][].

Checkpoints of older layouts resume too: [`RunState.restore`][] reads the buffer and generator
states of layout 1 and the torch-only generator state of the checkpoints that came before exact
resume.

The state goes into one file through [`save_checkpoint`][] rather than TorchRL's
`torchrl.checkpoint.Checkpoint` and `CheckpointRotation`: those write a directory (or ZIP
archive) per checkpoint under other names, which existing runs,
[`load_policy`][dqs_torchrl.experiments.harness.policy.load_policy] and the
run-directory checks ([`dqs_torchrl.experiments.harness.rundir`][]) do not read, and the
rotation skips a checkpoint it cannot read, where a resume here refuses and names it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tensordict import TensorDict
from torchrl.checkpoint import GlobalRNGState
from torchrl.collectors import Collector
from torchrl.data import ReplayBuffer
from torchrl.envs import EnvBase

from dqs_torchrl.experiments.harness.agents import Agent
from dqs_torchrl.experiments.harness.checkpoint import save_checkpoint
from dqs_torchrl.experiments.harness.resume import find_seeded_reset
from dqs_torchrl.experiments.harness.rundir import check_networks, run_identity

__all__ = [
    "VERSION",
    "RunState",
    "buffer_state",
    "collector_state",
    "load_buffer",
    "restore_collector",
    "restore_rng",
]

log = logging.getLogger(__name__)

# The layout of the checkpoint state. 1 (no `version` key): the buffer's writer as a bare
# `cursor`, the generators in a layout of our own; before exact resume, no `loop`, `eval_env`,
# `collector` and only `torch_rng`. 2: TorchRL's replay-buffer and generator state dicts.
VERSION = 2


class RunState:
    """The state of a run between two batches: the loop's counters and the objects they go with.

    `frames` counts the frames collected; `next_eval` and `next_ckpt` are the frame counts of
    the next evaluation and checkpoint (on the grid of their intervals); `debt` is the fraction
    of an update that `optim.utd_ratio` owes; `metrics` are the last update's losses (logged
    with every batch until the next update) and `last_eval` the last evaluation's mean return.
    """

    def __init__(
        self, cfg: DictConfig, agent: Agent, buffer: ReplayBuffer, eval_env: EnvBase
    ) -> None:
        self.cfg, self.agent, self.buffer, self.eval_env = cfg, agent, buffer, eval_env
        self.identity = run_identity(cfg)
        self.frames = 0
        self.next_eval = cfg.eval.interval_frames
        self.next_ckpt = cfg.checkpoint.interval_frames
        self.debt = 0.0
        self.metrics: dict[str, float] = {}
        self.last_eval: float | None = None
        self._collection: dict[str, Any] | None = None  # for restore_collection, after restore

    def updates_due(self, frames: int) -> int:
        """The updates owed for the `frames` just collected (counted in `frames` already):
        `optim.utd_ratio` per frame once past `collector.init_random_frames`, the fraction
        carried over to the next batch."""
        if self.frames <= self.cfg.collector.init_random_frames:
            return 0
        self.debt += frames * self.cfg.optim.utd_ratio
        due = 0
        while self.debt >= 1:
            self.debt -= 1
            due += 1
        return due

    def evaluation_due(self) -> bool:
        """Whether to evaluate now: every `eval.interval_frames`, and at the end."""
        due, self.next_eval = self._due(self.next_eval, self.cfg.eval.interval_frames)
        return due

    def checkpoint_due(self) -> bool:
        """Whether to checkpoint now: every `checkpoint.interval_frames`, and at the end."""
        due, self.next_ckpt = self._due(self.next_ckpt, self.cfg.checkpoint.interval_frames)
        return due

    def _due(self, when: int, interval: int) -> tuple[bool, int]:
        if self.frames >= when:
            return True, when + interval
        # the end-of-run one leaves the grid as it is, so that a longer resume keeps it
        return self.frames >= self.cfg.collector.total_frames, when

    def capture(self, collector: Any) -> dict[str, Any]:
        """The state a checkpoint holds (the module's docstring lists it); the generators last,
        so that nothing draws from them between here and the next batch."""
        return {
            "version": VERSION,
            "frames": self.frames,
            "agent": self.agent.state_dict(),
            "buffer": buffer_state(self.buffer),
            "loop": {
                "next_eval": self.next_eval,
                "next_ckpt": self.next_ckpt,
                "debt": self.debt,
                "metrics": self.metrics,
                "last_eval": self.last_eval,
            },
            "eval_env": {"resets": find_seeded_reset(self.eval_env).resets},
            "collector": collector_state(collector),
            "identity": self.identity,  # what a resume must match (rundir.open_run)
            "rng": GlobalRNGState().state_dict(),
        }

    def save(self, directory: Path, collector: Any) -> Path:
        """Write [`capture`][]'s state as `directory/ckpt_<frames>.pt` ([`save_checkpoint`][]),
        keeping the newest `checkpoint.keep_last`."""
        return save_checkpoint(
            self.capture(collector), directory, self.frames, self.cfg.checkpoint.keep_last
        )

    def restore(self, ckpt: Path, state: dict[str, Any]) -> None:
        """Put back the agent, buffer, counters and evaluation environment of checkpoint `ckpt`
        (its `state` as loaded), of any layout ([`VERSION`][]); keep what
        [`restore_collection`][] puts back once the collector is built.

        Refuses (a [`RunDirError`][dqs_torchrl.experiments.harness.rundir.RunDirError]) a
        checkpoint whose networks do not fit this config's agent.
        """
        check_networks(state["agent"], self.agent.state_dict(), ckpt)
        self.agent.load_state_dict(state["agent"])
        self.frames = int(state["frames"])
        load_buffer(self.buffer, state["buffer"], writes=self.frames)
        loop = state.get("loop", {})  # absent from checkpoints older than exact resume
        every = self.cfg.eval.interval_frames, self.cfg.checkpoint.interval_frames
        self.next_eval = loop.get("next_eval", (self.frames // every[0] + 1) * every[0])
        self.next_ckpt = loop.get("next_ckpt", (self.frames // every[1] + 1) * every[1])
        self.debt = loop.get("debt", 0.0)
        self.metrics = dict(loop.get("metrics", {}))
        self.last_eval = loop.get("last_eval")
        if "eval_env" in state:
            find_seeded_reset(self.eval_env).resets = int(state["eval_env"]["resets"])
        keys = ("collector", "rng", "torch_rng")
        self._collection = {key: state[key] for key in keys if key in state}
        log.info("resumed from %s at %d frames", ckpt, self.frames)

    def restore_collection(self, collector: Any) -> None:
        """After [`restore`][]: put the freshly built `collector` back in the episode the
        checkpoint was taken in ([`restore_collector`][]), then the random generators (last, so
        that nothing done here draws from them). Does nothing on a fresh start."""
        state, self._collection = self._collection, None
        if state is None:
            return
        if state.get("collector") is None or not isinstance(collector, Collector):
            log.warning(
                "no collector state to restore (a multi-process collector, or a checkpoint "
                "older than exact resume): the episode in progress restarts, so the resumed run "
                "is not identical to an uninterrupted one."
            )
        elif not restore_collector(collector, state["collector"]):
            log.warning(
                "replaying the episode in progress did not reproduce the checkpoint's "
                "environment state bit for bit (another machine or MuJoCo build?): the run "
                "continues from the replayed state and is not identical to an uninterrupted one."
            )
        restore_rng(state)


def buffer_state(buffer: ReplayBuffer) -> dict[str, Any]:
    """The replay buffer for a checkpoint: its filled rows (`data`, `length`) and the rest of
    TorchRL's `ReplayBuffer.state_dict()` (`replay_buffer`: writer, sampler, batch size).

    The storage's own state dict is left out: `LazyTensorStorage.state_dict()` holds the
    whole preallocated storage, so every checkpoint would carry `buffer.size` rows from the
    first one on, the unwritten ones uninitialised memory (`torch.empty`) that may differ
    between two otherwise identical runs. The rows are copied out of the storage: saving a
    slice of it would write the whole storage all the same.
    """
    n = len(buffer)
    rest = buffer.state_dict()
    del rest["_storage"]
    data = buffer.storage[:n].clone() if n else TensorDict()
    return {"data": data.to_dict(), "length": n, "replay_buffer": rest}


def load_buffer(buffer: ReplayBuffer, state: dict[str, Any], writes: int) -> None:
    """Fill the empty `buffer` from [`buffer_state`][]'s `state`, or from layout 1's (the rows
    and the writer's cursor), through `ReplayBuffer.load_state_dict`.

    Layout 1 did not record the writer's count of rows written; the loop writes every frame
    it collects once, so `writes` (the frames collected) stands for it.
    """
    if not state["length"]:
        return
    # the rows go where they were (the writer starts at 0, as the storage is ordered)
    buffer.extend(TensorDict.from_dict(state["data"], batch_size=[state["length"]]))
    whole = buffer.state_dict()  # the storage as just written, and TorchRL's layout for the rest
    if "replay_buffer" in state:
        whole.update(state["replay_buffer"])
    else:  # layout 1
        whole["_writer"].update(_cursor=state["cursor"], _write_count=writes)
    buffer.load_state_dict(whole)


def collector_state(collector: Any) -> dict[str, Any] | None:
    """What a single-process `Collector` carries from one batch to the next.

    The episode in progress
    ([`SeededReset.episode`][dqs_torchrl.experiments.harness.resume.SeededReset.episode]), the
    carrier (the data the next step starts from: observation, step count, episode return,
    trajectory id) and the next trajectory id. `None` for multi-process collectors: their
    environments live in the workers, so a resume starts them afresh.
    """
    seeded = find_seeded_reset(getattr(collector, "env", None))
    if not isinstance(collector, Collector) or seeded is None:
        return None
    traj_pool = collector.state_dict().get("traj_pool")
    if traj_pool is None:  # a collector built with track_traj_ids=False
        return None
    # The carrier is private: TorchRL 0.14 has no public access to the data in flight, since
    # Collector.load_state_dict deliberately starts a new trajectory (environment state is not
    # serialisable in general; here SeededReset makes the episode rebuildable).
    return {
        **seeded.episode(),
        "carrier": collector._carrier.clone().to_dict(),
        "traj_pool": traj_pool["traj_id"],
    }


def restore_collector(collector: Any, state: dict[str, Any]) -> bool:
    """Put a freshly built `collector` back where [`collector_state`][] found it.

    Redoes the reset that began the episode in progress, replays its actions, then restores
    the carrier and the trajectory counter. Returns whether the replayed environment matches
    the checkpoint bit for bit; when it does not (another machine or MuJoCo build), the
    replayed state is kept so that transitions stay consistent with the simulator, and the
    resumed run is no longer identical to an uninterrupted one.
    """
    env = collector.env
    seeded = find_seeded_reset(env)
    seeded.resets = int(state["resets"]) - 1
    replayed = env.reset()
    for action in state["actions"]:
        replayed.set(env.action_key, action)
        _, replayed = env.step_and_maybe_reset(replayed)
    device = collector._carrier.device
    carrier = TensorDict.from_dict(state["carrier"], batch_size=env.batch_size, device=device)
    exact = seeded.resets == int(state["resets"]) and all(
        carrier.get(key, None) is not None and torch.equal(value, carrier.get(key))
        for key, value in replayed.items(include_nested=True, leaves_only=True)
    )
    if not exact:
        carrier = replayed.update(carrier.select("collector", strict=False))
        if device is None:
            carrier.clear_device_()
    # Private, as TorchRL has no public way to continue a trajectory: Collector.load_state_dict
    # restores the trajectory counter, then draws a new trajectory id for a fresh carrier.
    collector._carrier = carrier
    collector._traj_pool.load_state_dict({"traj_id": state["traj_pool"]})
    return exact


def restore_rng(state: dict[str, Any]) -> None:
    """Set the random generators from a checkpoint's `state`, of any layout: TorchRL's
    `GlobalRNGState`, layout 1's own, or the torch generator alone (before exact resume).

    CUDA generator states are left out on a machine without a GPU (a GPU run may resume on
    the CPU: `device` may change on resume).
    """
    rng = state.get("rng")
    if rng is None:
        torch.set_rng_state(state["torch_rng"])
        return
    if "torch" in rng:  # layout 1
        n, p = rng["numpy"], rng["python"]
        rng = {
            "python": (p["version"], tuple(p["internal"].tolist()), p["gauss_next"]),
            "numpy": ("MT19937", n["keys"], n["pos"], n["has_gauss"], n["cached_gaussian"]),
            "torch_cpu": rng["torch"],
            **({"torch_cuda": rng["cuda"]} if rng.get("cuda") is not None else {}),
        }
    if "torch_cuda" in rng and not torch.cuda.is_available():
        rng = {key: value for key, value in rng.items() if key != "torch_cuda"}
    GlobalRNGState().load_state_dict(rng)
