"""Model-side pixel normalisation: tile bytes in, the tensor the vision tower reads out.

The pipeline hands tiles to the engine as uint8 RGB (a quarter of the float32 size), so the
server never spends CPU on normalisation and the hop to the engine process and the upload to
an accelerator move 4x fewer bytes. The engine normalises on its own device, after the copy,
into a buffer it keeps (:class:`PixelStaging`): a fresh tensor of that size per request would
cost thousands of page faults, kernel time on every prefill.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from inference_svc.model_inputs import IMAGENET_MEAN, IMAGENET_STD

PixelArray = npt.NDArray[np.uint8] | npt.NDArray[np.float32]
ACCEPTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


def check_dtype(pixels: PixelArray) -> None:
    if pixels.dtype not in ACCEPTED_DTYPES:
        raise ValueError(
            f"pixel_values dtype {pixels.dtype} is not accepted: send uint8 RGB tiles (the "
            "engine normalises them) or float32 tiles that are already normalised"
        )


def _normalise_(floats: torch.Tensor) -> torch.Tensor:
    """In place: byte values held as float32 -> ImageNet-normalised.

    The operations are torchvision's ToTensor + Normalize in float32 ((x / 255 - mean) / std),
    so on CPU the values are bit-identical to the replaced service's transform."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=floats.device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=floats.device)
    return floats.div_(255).sub_(mean[:, None, None]).div_(std[:, None, None])


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> a new float32 ImageNet-normalised tensor on the same device."""
    return _normalise_(pixels.float())


def normalise_array(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """NumPy convenience for tests and benchmarks: the same values as :func:`normalise`."""
    out: npt.NDArray[np.float32] = normalise(torch.from_numpy(np.ascontiguousarray(pixels))).numpy()
    return out


class PixelStaging:
    """Turns the tiles of one model call into the vision tower's input, in a reused buffer.

    Owned by the model thread: the tensor returned by :meth:`stage` is only valid until the
    next call, which is how the engines use it (the vision tower has consumed it by then).
    The buffer grows to the largest call seen and is kept, so steady state allocates nothing.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._buffer: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        """Tiles the buffer holds now."""
        return 0 if self._buffer is None else int(self._buffer.shape[0])

    def stage(self, tiles: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """Concatenate ``tiles`` (each uint8 bytes or float32 already normalised) onto the
        device, normalise the bytes and cast to ``dtype``."""
        if not tiles:
            raise ValueError("no tiles to stage")
        total = sum(int(t.shape[0]) for t in tiles)
        out = self._reserve(total, tuple(tiles[0].shape[1:]))
        offset = 0
        for part_in in tiles:
            count = int(part_in.shape[0])
            part = out[offset : offset + count]
            part.copy_(part_in, non_blocking=True)  # converts bytes to float32 values on copy
            if part_in.dtype == torch.uint8:
                _normalise_(part)
            offset += count
        return out if dtype == torch.float32 else out.to(dtype)

    def release(self) -> None:
        self._buffer = None

    def _reserve(self, tiles: int, shape: tuple[int, ...]) -> torch.Tensor:
        buffer = self._buffer
        if buffer is None or buffer.shape[0] < tiles or tuple(buffer.shape[1:]) != shape:
            buffer = torch.empty((tiles, *shape), dtype=torch.float32, device=self.device)
            self._buffer = buffer
        return buffer[:tiles]
