"""Tap tensors for datasets: inputs prepared in worker processes, packed several to a forward, stored as
one safetensors file per input or as WebDataset shards, on one machine, under torchrun, or in Ray Data.

A concern of its own, above the model, inputs and taps it combines: `prepare` (an input -> its tensors,
ids and metadata), `packing` and `extract` (the library entry point `extract_latents`), `records` (what
is stored, resume keys, one file per input), `shards` (WebDataset tar shards), `ray_data` (a Ray Data
callable class). `qwenvl_min.cli.latents` is the command on top; docs/latents.md the guide.
"""
