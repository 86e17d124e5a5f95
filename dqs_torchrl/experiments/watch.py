"""`dqs-watch`: trained dm_control policies side by side in one video, each panel labelled.

    dqs-watch ~/dqs-runs/cheetah-run/dqs/seed1 ~/dqs-runs/cheetah-run/sac/seed1 --out cheetah.gif
    dqs-watch RUN_DIR policy.pt --steps 1000 --every 1 --size 240 320 --out both.mp4

(`python recipes/watch.py` from a clone runs the same `main`.) Each source is a run directory
(its newest checkpoint) or a policy file of `export_policy`. Every policy acts in its own
copy of its run's environment, reset from the same `--seed`, for `--steps` steps (sampling
the policy, or its deterministic mode with `--deterministic`), and the frames are placed
side by side, one panel per source under two lines that name it: the label (`--labels`, or
`<algo> seed<k>`), then the frames it was trained for and its return over the steps shown. A
panel whose episode ended early holds its last frame. `--every k` keeps every k-th step and
plays at 30 / k frames per second, so the video runs in real time at any k.

Nothing is overwritten: an existing `--out` is an error unless `--force`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dqs_torchrl.experiments.harness.video import (
    VIDEO_FORMATS,
    missing_video_writer,
    write_video,
)

__all__ = ["Panel", "main", "side_by_side", "watch"]

log = logging.getLogger(__name__)
FPS = 30  # one environment step per frame, as the recipes' evaluation videos
HEADER = 26  # pixels of the two label lines above each panel


@dataclass
class Panel:
    """One policy's episode: its frames `[T, H, W, 3]` and the line that labels them."""

    label: str
    frames: np.ndarray
    episode_return: float
    trained_frames: int

    @property
    def caption(self) -> str:
        f = self.trained_frames
        trained = f"{f // 1000}k" if f % 1000 == 0 else f"{f:,}"
        return f"{self.label}\n{trained} frames, return {self.episode_return:.0f}"


def side_by_side(panels: Sequence[Panel], every: int = 1) -> np.ndarray:
    """The panels' frames next to each other, `[T, HEADER + H, sum W, 3]`, every `every`-th
    step, with each caption drawn on a white strip above its panel; shorter episodes hold
    their last frame.

    Examples:
        >>> a = Panel("a", np.zeros((3, 8, 10, 3), np.uint8), 1.0, 1000)
        >>> b = Panel("b", np.full((2, 8, 6, 3), 255, np.uint8), 2.0, 2000)
        >>> side_by_side([a, b]).shape
        (3, 34, 16, 3)
        >>> side_by_side([a, b], every=2).shape
        (2, 34, 16, 3)
    """
    from PIL import Image, ImageDraw

    heights = {p.frames.shape[1] for p in panels}
    if len(heights) != 1:
        raise ValueError(f"panels must have one frame height; got {sorted(heights)}.")
    length = max(len(p.frames) for p in panels)
    columns = []
    for p in panels:
        frames = np.concatenate([p.frames, np.repeat(p.frames[-1:], length - len(p.frames), 0)])
        header = Image.new("RGB", (frames.shape[2], HEADER), "white")
        ImageDraw.Draw(header).multiline_text((2, 1), p.caption, fill="black", spacing=2)
        header = np.broadcast_to(np.asarray(header), (length, HEADER, frames.shape[2], 3))
        columns.append(np.concatenate([header, frames], axis=1))
    return np.ascontiguousarray(np.concatenate(columns, axis=2)[::every])


def watch(
    sources: Sequence[str | Path],
    steps: int = 250,
    seed: int = 1,
    size: tuple[int, int] = (120, 160),
    deterministic: bool = False,
    labels: Sequence[str] | None = None,
) -> list[Panel]:
    """One episode of each source's policy, `steps` steps from the reset of `seed`, rendered at
    `size` (`[height, width]`): a [`Panel`][] each, in the order given."""
    from dqs_torchrl.experiments.envs import check_rendering, dmc_renderer
    from dqs_torchrl.experiments.harness.loop import evaluate, make_env
    from dqs_torchrl.experiments.harness.policy import load_trained_policy

    if labels is not None and len(labels) != len(sources):
        raise ValueError(f"--labels gives {len(labels)} labels for {len(sources)} sources.")
    # a rendering backend unless the user chose one, set before dm_control is first imported
    os.environ.setdefault("MUJOCO_GL", "egl")
    panels = []
    for i, source in enumerate(sources):
        trained = load_trained_policy(source)
        cfg = trained.config
        if cfg.env.suite != "dmc":
            raise ValueError(
                f"{source} is a {cfg.env.suite} run: dqs-watch renders dm_control tasks (a maze "
                "run draws its evaluation trajectories in trajectories.png)."
            )
        why = check_rendering(cfg.env.task)
        if why is not None:
            raise RuntimeError(f"dqs-watch needs MuJoCo to render: {why}.")
        env = make_env(trained.config, seed)
        frames: list[np.ndarray] = []
        torch.manual_seed(seed)  # the sampler's noise: the same video for the same arguments
        returns, _ = evaluate(
            env,
            trained.policy,
            1,
            deterministic,
            max_steps=steps,
            render=dmc_renderer(env, *size),
            frames=frames,
        )
        env.close()
        label = labels[i] if labels is not None else f"{cfg.algo.name} seed{cfg.seed}"
        panels.append(Panel(label, np.stack(frames), returns[0], trained.frames))
        log.info("%s: return %.1f over %d steps", label, returns[0], len(frames) - 1)
    return panels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", help="run directories or policy files (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the video: .gif or .mp4")
    parser.add_argument("--steps", type=int, default=250, help="environment steps shown")
    parser.add_argument("--every", type=int, default=2, help="keep every k-th step")
    parser.add_argument("--seed", type=int, default=1, help="the environment's reset seed")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(120, 160), metavar=("HEIGHT", "WIDTH")
    )
    parser.add_argument("--deterministic", action="store_true", help="the policies' modes")
    parser.add_argument("--labels", nargs="+", default=None, help="one per source")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    args = parser.parse_args(argv)
    suffix = args.out.suffix.lstrip(".")
    if suffix not in VIDEO_FORMATS:
        parser.error(f"--out must end in one of .{', .'.join(VIDEO_FORMATS)}; got {args.out}.")
    missing = missing_video_writer(suffix)
    if missing:
        parser.error(
            f"--out {args.out} needs the {missing} package (pip install {missing}), or .gif."
        )
    if args.out.exists() and not args.force:
        parser.error(f"--out {args.out} exists; pass --force to overwrite it.")
    for name in ("steps", "every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1; got {getattr(args, name)}.")
    panels = watch(
        args.sources, args.steps, args.seed, tuple(args.size), args.deterministic, args.labels
    )
    write_video(args.out, side_by_side(panels, args.every), fps=FPS / args.every)
    for p in panels:
        print(p.caption.replace("\n", ": "))
    print(f"video written to {args.out}")


if __name__ == "__main__":
    main()
