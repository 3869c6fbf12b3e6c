"""Gradio's Slider and Number, with the range check left to ui/fields.py.

Stock Slider/Number refuse an out-of-range value themselves, before the handler runs, with
"Value 9 is greater than maximum value 5." and a traceback in the server log, and without
naming the field. These pass the value on unchanged, so the handler's check answers with the
field's name and range, in one log line. The browser draws them as the stock components.
"""
from __future__ import annotations

import gradio as gr

from gradio.events import Dependency

class FieldSlider(gr.Slider):
    def get_block_name(self) -> str:
        return "slider"

    def preprocess(self, payload):
        return payload
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class FieldNumber(gr.Number):
    def get_block_name(self) -> str:
        return "number"

    def preprocess(self, payload):
        return payload
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component