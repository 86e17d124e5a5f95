"""Evaluation videos: frames to a file in the run directory, and to the active logger.

GIF is written with Pillow (a dependency of matplotlib, so of the `recipes` extra), MP4 with
torchcodec's `VideoEncoder`, the writer TorchRL's own `CSVLogger` uses. TorchRL's
`log_video` of the W&B and TensorBoard loggers needs moviepy to encode a tensor; here the
encoded file goes to W&B (`wandb.Video(path)`) and a GIF into a TensorBoard image summary,
which is what TensorBoard's `add_video` writes, so neither needs moviepy.
"""

from __future__ import annotations

import io
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["VIDEO_FORMATS", "log_video", "missing_video_writer", "write_video"]

VIDEO_FORMATS = ("gif", "mp4")
_WRITERS = {"gif": ("PIL", "pillow"), "mp4": ("torchcodec", "torchcodec")}


def missing_video_writer(video_format: str) -> str | None:
    """The package to install for `video_format`, or `None` when it is installed.

    Examples:
        >>> missing_video_writer("gif") is None
        True
    """
    module, package = _WRITERS[video_format]
    return None if find_spec(module) is not None else package


def _gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """An animated GIF of `frames`, all on one 256-colour palette taken from up to 8 of them
    and without dithering: half the bytes of a palette per frame with dithering (whose noise
    differs from frame to frame) on a dm_control scene, and no flicker between frames."""
    from PIL import Image

    sample = frames[np.linspace(0, len(frames) - 1, min(8, len(frames))).astype(int)]
    palette = Image.fromarray(np.concatenate(list(sample), axis=0)).quantize(
        colors=256, dither=Image.Dither.NONE
    )
    images = [
        Image.fromarray(frame).quantize(palette=palette, dither=Image.Dither.NONE)
        for frame in frames
    ]
    out = io.BytesIO()
    # GIF stores each frame's duration in 10 ms units
    duration = max(20, round(1000 / fps / 10) * 10)
    images[0].save(
        out, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
    )
    return out.getvalue()


def write_video(path: str | Path, frames: np.ndarray, fps: float = 30.0) -> Path:
    """Write `frames` (`[T, H, W, 3]` uint8) to `path`, a `.gif` or an `.mp4`.

    Examples:
        >>> import tempfile
        >>> frames = np.zeros((4, 8, 8, 3), dtype=np.uint8)
        >>> path = write_video(Path(tempfile.mkdtemp()) / "a.gif", frames)
        >>> path.read_bytes()[:6]
        b'GIF89a'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video_format = path.suffix.lstrip(".")
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video files are one of {', '.join(VIDEO_FORMATS)}; got {path}.")
    missing = missing_video_writer(video_format)
    if missing:
        raise ModuleNotFoundError(f"writing {path.name} needs {missing}: pip install {missing}.")
    if video_format == "gif":
        path.write_bytes(_gif_bytes(frames, fps))
    else:
        from torchcodec.encoders import VideoEncoder

        video = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # T, C, H, W
        VideoEncoder(frames=video, frame_rate=fps).to_file(str(path))
    return path


def log_video(logger: Any, tag: str, path: Path, frames: np.ndarray, fps: float, step: int) -> None:
    """Send the video at `path` (its frames `[T, H, W, 3]`) to `logger`: W&B gets the
    file, TensorBoard an animated GIF; TorchRL's `CSVLogger` nothing (its files are the run
    directory's, where the video already is)."""
    from torchrl.record.loggers.tensorboard import TensorboardLogger
    from torchrl.record.loggers.wandb import WandbLogger

    if isinstance(logger, WandbLogger):
        import wandb

        logger.log_metrics({tag: wandb.Video(str(path), format=path.suffix.lstrip("."))}, step)
    elif isinstance(logger, TensorboardLogger):
        from tensorboard.compat.proto.summary_pb2 import Summary

        _, height, width, channels = frames.shape
        image = Summary.Image(
            height=height,
            width=width,
            colorspace=channels,
            encoded_image_string=_gif_bytes(frames, fps),
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        logger.experiment.file_writer.add_summary(summary, step)
