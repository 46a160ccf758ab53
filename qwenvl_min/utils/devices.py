"""Check a device name before loading anything onto it: a one-line error naming the device, what this
machine has, and what to pass, instead of torch's traceback from deep inside the first allocation."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The device asked for does not exist or is not usable here."""


def available_devices() -> list[str]:
    """Device names usable here, e.g. ['cpu', 'cuda:0', 'cuda:1'] or ['cpu', 'mps']."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(name: str | torch.device, option: str = "--device") -> torch.device:
    """`name` as a torch.device if it can be used here and holds data; DeviceError otherwise.

    `option` is how the caller's user spelled the choice: a CLI flag ("--device": messages read
    "--device cuda: ...; pass --device cpu") or a keyword argument ("device": "device='cuda': ...").
    """

    def said(value: object) -> str:
        return f"{option} {value}" if option.startswith("-") else f"{option}={str(value)!r}"

    here = ", ".join(available_devices())
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(
            f"{said(name)}: unknown device {str(name)!r}, it is not a device name torch knows; "
            f"available here: {here}"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "meta":
        raise DeviceError(
            f"{said(name)}: device 'meta' holds no data (it only records shapes); pass {said('cpu')}"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is a CPU-only build (install a CUDA build of torch to use a GPU)"
                if torch.version.cuda is None and torch.version.hip is None
                else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"
            )
            raise DeviceError(
                f"{said(name)}: CUDA is not available, {why}; available here: {here}; pass {said('cpu')}"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"{said(name)}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                f"(cuda:0..cuda:{count - 1}); available here: {here}; pass {said('cuda:0')}"
            )
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            why = (
                "this torch was built without MPS"
                if not torch.backends.mps.is_built()
                else "MPS needs Apple silicon with macOS 12.3 or later"
            )
            raise DeviceError(
                f"{said(name)}: MPS is not available ({why}); available here: {here}; pass {said('cpu')}"
            )
        return device
    backend = getattr(torch, device.type, None)
    usable = getattr(backend, "is_available", None)
    if usable is None or not usable():
        raise DeviceError(
            f"{said(name)}: {device.type} is not available in this torch; available here: {here}; pass {said('cpu')}"
        )
    return device
