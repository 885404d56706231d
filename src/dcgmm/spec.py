"""Spec strings with the paper's letters, and the Table I architectures as named presets.

Grammar: layers separated by spaces, each one of

* ``F(fy,fx,sy,sx)`` — Folding, window fy x fx, strides sy, sx;
* ``P(ky,kx)`` or ``P(ky,kx,sy,sx)`` — max Pooling (strides default to the kernel);
* ``G(K)`` — GMM layer with K components;
* ``C(n)`` — linear classifier with n classes (last layer only).

Example: ``"F(8,8,2,2) G(25) F(11,11,1,1) G(36) C(10)"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import DCGMMError, SpecError
from .layers import Classifier, Folding, GMM, Layer, Pooling

#: Table I of the paper, for 28x28x1 inputs. 3L-a as printed ends in F(6,6,1,1), which does not fit the
#: 5x5 map left after the second pooling; we use the nearest valid reading, a 5x5 top fold.
PRESETS: dict[str, str] = {
    "1L": "F(28,28,1,1) G(25)",
    "2L-a": "F(20,20,8,8) G(25) F(2,2,1,1) G(36)",
    "2L-b": "F(7,7,7,7) G(25) F(4,4,1,1) G(36)",
    "2L-c": "F(8,8,2,2) G(25) F(11,11,1,1) G(36)",
    "2L-d": "F(28,28,1,1) G(25) F(1,1,1,1) G(36)",
    "2L-e": "F(4,4,2,2) G(25) F(13,13,1,1) G(36)",
    "3L-a": "F(3,3,1,1) G(25) P(2,2) F(4,4,1,1) G(25) P(2,2) F(5,5,1,1) G(49)",
    "3L-b": "F(28,28,1,1) G(25) F(1,1,1,1) G(25) F(1,1,1,1) G(25)",
}

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


def resolve(arch: str) -> str:
    """Return the spec string for a preset name (case-insensitive) or a spec string itself."""
    text = str(arch).strip()
    for name, spec in PRESETS.items():
        if text.lower() == name.lower():
            return spec
    if "(" not in text:
        raise SpecError(f"unknown architecture {arch!r}: use a preset ({', '.join(PRESETS)}) or a spec string like 'F(8,8,2,2) G(25)'")
    return text


def parse(spec: str) -> list[LayerSpec]:
    """Parse a spec string (or preset name) into layer specs; raises SpecError saying what is wrong."""
    text = resolve(spec)
    layers, pos = [], 0
    for match in _TOKEN.finditer(text):
        gap = text[pos : match.start()].strip()
        if gap:
            raise SpecError(f"cannot read {gap!r} in spec {text!r}: layers look like F(8,8,2,2), P(2,2), G(25), C(10)")
        pos = match.end()
        letter = match.group(1).upper()
        if letter not in _ARITY:
            raise SpecError(f"unknown layer type {match.group(0)!r} in spec {text!r}: use F, P, G or C")
        try:
            args = tuple(int(a) for a in match.group(2).split(","))
        except ValueError:
            raise SpecError(f"{match.group(0)!r}: arguments must be integers, as in {_FORMS[letter]}") from None
        if len(args) not in _ARITY[letter]:
            raise SpecError(f"{match.group(0)!r} has {len(args)} argument(s); write {_FORMS[letter]}")
        if min(args) < 1:
            raise SpecError(f"{match.group(0)!r}: arguments must be positive")
        layers.append(LayerSpec(letter, args))
    rest = text[pos:].strip()
    if rest:
        raise SpecError(f"cannot read {rest!r} at the end of spec {text!r}: layers look like F(8,8,2,2), G(25)")
    if not layers:
        raise SpecError(f"spec {text!r} has no layers: write e.g. 'F(28,28,1,1) G(25)'")
    if not any(layer.letter == "G" for layer in layers):
        raise SpecError(f"spec {text!r} has no GMM layer G(K): a DCGMM needs at least one")
    for i, layer in enumerate(layers[:-1]):
        if layer.letter == "C":
            raise SpecError(f"spec {text!r}: the classifier C(n) must be the last layer (found at position {i + 1})")
    return layers


def build_layers(
    spec: str, input_shape: tuple[int, int, int], variance_floor: float = 0.05, mu_init: float = 0.01
) -> list[Layer]:
    """Build the layers of ``spec`` for inputs of shape ``(H, W, C)``; each layer's input is the previous output."""
    shape = tuple(int(s) for s in input_shape)
    layers = []
    for i, layer_spec in enumerate(parse(spec)):
        try:
            layer = _make(layer_spec, shape, variance_floor, mu_init)
        except DCGMMError as exc:
            raise SpecError(f"layer {i + 1} {layer_spec} on input {shape[0]}x{shape[1]}x{shape[2]}: {exc}") from None
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
