"""Gradio's Slider and Number, with the range check left to fields/__init__.py.

Stock Slider/Number refuse an out-of-range value themselves, before the handler runs, with
"Value 9 is greater than maximum value 5." and a traceback in the server log, and without
naming the field. These pass the value on unchanged, so the handler's check answers with the
field's name and range, in one log line.

They are stock components whose `preprocess` is replaced on the instance: a subclass would make
Gradio write a `.pyi` stub next to this file at every import.
"""
from __future__ import annotations

import gradio as gr


def _as_sent(payload):
    return payload


def FieldSlider(*args, **kwargs) -> gr.Slider:  # noqa: N802  (reads like the component it builds)
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = _as_sent
    return slider


def FieldNumber(*args, **kwargs) -> gr.Number:  # noqa: N802
    number = gr.Number(*args, **kwargs)
    number.preprocess = _as_sent
    return number


def slider(spec, value, step, label, elem_id=None, **kw) -> gr.Slider:
    """A slider offering exactly the range its field allows (fields/)."""
    return FieldSlider(spec.lowest, spec.hi, value, step=step, label=label, elem_id=elem_id or spec.name, **kw)
