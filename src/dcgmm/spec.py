"""Spec strings with the paper's letters, and the Table I architectures (and the library's default) as named presets.

Grammar: layers separated by spaces, each one of

* ``F(fy,fx,sy,sx)`` — Folding, window fy x fx, strides sy, sx;
* ``P(ky,kx)`` or ``P(ky,kx,sy,sx)`` — max Pooling (strides default to the kernel);
* ``G(K)`` — GMM layer with K components;
* ``C(n)`` — linear classifier with n classes (last layer only).

Example: ``"F(8,8,2,2) G(25) F(11,11,1,1) G(36) C(10)"``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from .errors import DCGMMError, SpecError
from .layers import Classifier, Folding, GMM, Layer, Pooling

#: Table I of the paper, for 28x28x1 inputs. 3L-a as printed ends in F(6,6,1,1), which does not fit the
#: 5x5 map left after the second pooling; we use the nearest valid reading, a 5x5 top fold.
TABLE_I: dict[str, str] = {
    "1L": "F(28,28,1,1) G(25)",
    "2L-a": "F(20,20,8,8) G(25) F(2,2,1,1) G(36)",
    "2L-b": "F(7,7,7,7) G(25) F(4,4,1,1) G(36)",
    "2L-c": "F(8,8,2,2) G(25) F(11,11,1,1) G(36)",
    "2L-d": "F(28,28,1,1) G(25) F(1,1,1,1) G(36)",
    "2L-e": "F(4,4,2,2) G(25) F(13,13,1,1) G(36)",
    "3L-a": "F(3,3,1,1) G(25) P(2,2) F(4,4,1,1) G(25) P(2,2) F(5,5,1,1) G(49)",
    "3L-b": "F(28,28,1,1) G(25) F(1,1,1,1) G(25) F(1,1,1,1) G(25)",
}

#: Every named architecture: Table I and 2L-c64, the library's default (not in the paper) — 2L-c with 64
#: components in its lowest GMM layer instead of 25. Its finer 8x8 patches make it the better model for
#: in-painting and outlier detection on MNIST (docs/inpainting.md), for 1.3x 2L-c's training time.
PRESETS: dict[str, str] = {**TABLE_I, "2L-c64": "F(8,8,2,2) G(64) F(11,11,1,1) G(36)"}

MAX_LAYERS = 64
"""Longest stack a spec may describe (Table I's deepest has 8 layers)."""
MAX_PARAMETER_FRACTION = 0.5
"""A model whose parameters (float32) would take more than this fraction of the machine's memory is refused."""

_ARITY = {"F": (4,), "P": (2, 4), "G": (1,), "C": (1,)}
_FORMS = {"F": "F(fy,fx,sy,sx)", "P": "P(ky,kx) or P(ky,kx,sy,sx)", "G": "G(K)", "C": "C(n_classes)"}
_TOKEN = re.compile(r"([A-Za-z]+)\s*\(([^()]*)\)")


@dataclass(frozen=True)
class LayerSpec:
    """One parsed layer: its letter and integer arguments."""

    letter: str
    args: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.letter}({','.join(map(str, self.args))})"


def shorten(text: str, limit: int = 80) -> str:
    """``text`` for an error message: cut to ``limit`` characters, saying how long it was."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def resolve(arch: str) -> str:
    """Return the spec string for a preset name (case-insensitive) or a spec string itself."""
    text = str(arch).strip()
    for name, spec in PRESETS.items():
        if text.lower() == name.lower():
            return spec
    if "(" not in text:
        raise SpecError(f"unknown architecture {shorten(repr(arch))}: use a preset ({', '.join(PRESETS)}) or a spec string like 'F(8,8,2,2) G(25)'")
    return text


def parse(spec: str) -> list[LayerSpec]:
    """Parse a spec string (or preset name) into layer specs; raises SpecError saying what is wrong."""
    text = resolve(spec)
    quoted = shorten(repr(text))
    layers, pos = [], 0
    for match in _TOKEN.finditer(text):
        gap = text[pos : match.start()].strip()
        token = shorten(repr(match.group(0)), 40)
        if gap:
            raise SpecError(f"cannot read {shorten(repr(gap), 40)} in spec {quoted}: layers look like F(8,8,2,2), P(2,2), G(25), C(10)")
        pos = match.end()
        letter = match.group(1).upper()
        if letter not in _ARITY:
            raise SpecError(f"unknown layer type {token} in spec {quoted}: use F, P, G or C")
        parts = [a.strip() for a in match.group(2).split(",")]
        if not all(re.fullmatch("[0-9]+", a) for a in parts):  # ASCII digits only: int() would take '٥' too
            raise SpecError(f"{token}: arguments must be integers written with the digits 0-9, as in {_FORMS[letter]}")
        args = tuple(int(a) for a in parts)
        if len(args) not in _ARITY[letter]:
            raise SpecError(f"{token} has {len(args)} argument(s); write {_FORMS[letter]}")
        if min(args) < 1:
            raise SpecError(f"{token}: arguments must be positive")
        layers.append(LayerSpec(letter, args))
        if len(layers) > MAX_LAYERS:
            raise SpecError(f"spec {quoted} has more than {MAX_LAYERS} layers: write a shorter stack")
    rest = text[pos:].strip()
    if rest:
        raise SpecError(f"cannot read {shorten(repr(rest), 40)} at the end of spec {quoted}: layers look like F(8,8,2,2), G(25)")
    if not layers:
        raise SpecError(f"spec {quoted} has no layers: write e.g. 'F(28,28,1,1) G(25)'")
    if not any(layer.letter == "G" for layer in layers):
        raise SpecError(f"spec {quoted} has no GMM layer G(K): a DCGMM needs at least one")
    for i, layer in enumerate(layers[:-1]):
        if layer.letter == "C":
            raise SpecError(f"spec {quoted}: the classifier C(n) must be the last layer (found at position {i + 1})")
    return layers


def _memory_bytes() -> int | None:
    """Physical memory of this machine in bytes, if the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _parameter_count(layer_spec: LayerSpec, shape: tuple[int, int, int]) -> int:
    """Parameters a layer would allocate on an input of ``shape``, computed without allocating them."""
    h, w, c = shape
    if layer_spec.letter == "G":
        return layer_spec.args[0] * (2 * c + 1)
    if layer_spec.letter == "C":
        return (h * w * c + 1) * layer_spec.args[0]
    return 0


def _check_size(layer_spec: LayerSpec, index: int, shape, total: int) -> None:
    memory = _memory_bytes()
    if memory is None or 4 * total <= MAX_PARAMETER_FRACTION * memory:
        return
    raise SpecError(
        f"layer {index} {layer_spec} on input {shape[0]}x{shape[1]}x{shape[2]} brings the model to {total:,} parameters "
        f"({_bytes(4 * total)} as float32), more than {MAX_PARAMETER_FRACTION:.0%} of this machine's {_bytes(memory)}: "
        f"use fewer components or smaller windows"
    )


def _check_activity(layer_spec: LayerSpec, index: int, out_shape) -> None:
    memory = _memory_bytes()
    batch = 4 * 100 * math.prod(out_shape)  # float32, a batch of 100 images
    if memory is None or batch <= MAX_PARAMETER_FRACTION * memory:
        return
    raise SpecError(
        f"layer {index} {layer_spec} outputs {out_shape[0]}x{out_shape[1]}x{out_shape[2]} values per image: a batch of 100 "
        f"images would take {_bytes(batch)}, more than {MAX_PARAMETER_FRACTION:.0%} of this machine's {_bytes(memory)}: "
        f"use fewer components or larger strides"
    )


def _bytes(n: float) -> str:
    units = ["B", "KB", "MB", "GB", "TB", "PB"]
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n, step = n / 1000, step + 1
    return f"{n:.1f} {units[step]}"


def build_layers(
    spec: str, input_shape: tuple[int, int, int], variance_floor: float | tuple[float, float] = 0.05, mu_init: float = 0.01
) -> list[Layer]:
    """Build the layers of ``spec`` for inputs of shape ``(H, W, C)``; each layer's input is the previous output.

    ``variance_floor``: one floor for every GMM layer, or (floor of the GMM layers below the top one, floor of
    the top GMM layer when there are several).
    """
    shape = tuple(int(s) for s in input_shape)
    floors = variance_floor if isinstance(variance_floor, tuple) else (variance_floor, variance_floor)
    specs = parse(spec)
    mixtures = [i for i, layer_spec in enumerate(specs) if layer_spec.letter == "G"]
    layers, total = [], 0
    for i, layer_spec in enumerate(specs):
        total += _parameter_count(layer_spec, shape)
        _check_size(layer_spec, i + 1, shape, total)
        if layer_spec.letter == "G":  # before its parameters are allocated
            _check_activity(layer_spec, i + 1, (shape[0], shape[1], layer_spec.args[0]))
        try:
            floor = floors[1] if len(mixtures) > 1 and i == mixtures[-1] else floors[0]
            layer = _make(layer_spec, shape, floor, mu_init)
        except DCGMMError as exc:
            raise SpecError(f"layer {i + 1} {layer_spec} on input {shape[0]}x{shape[1]}x{shape[2]}: {exc}") from None
        _check_activity(layer_spec, i + 1, layer.out_shape)
        layers.append(layer)
        shape = layer.out_shape
    return layers


def _make(layer_spec: LayerSpec, shape, variance_floor: float, mu_init: float) -> Layer:
    letter, args = layer_spec.letter, layer_spec.args
    if letter == "F":
        return Folding(shape, *args)
    if letter == "P":
        return Pooling(shape, *args)
    if letter == "G":
        return GMM(shape, args[0], variance_floor=variance_floor, mu_init=mu_init)
    return Classifier(shape, args[0])


def spec_string(layers: list[Layer]) -> str:
    """The spec string of a list of layers."""
    return " ".join(layer.spec() for layer in layers)
