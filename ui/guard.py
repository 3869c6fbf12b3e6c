"""How a handler's refusal reaches the person who caused it.

In the page: a toast with the message as text (HTML escaped), no output changed, so no red
"Error" badge is left on unrelated components. Through the named API: the message as the error
the client raises. In both cases the server log gets one line, not a traceback; only an
unexpected exception (a bug) is logged with its traceback.
"""
from __future__ import annotations

import functools
import html
import inspect
import logging

import gradio as gr

from costeer.engine.cloud import CloudError
from user_store import StoreError

from fields import Refused

log = logging.getLogger("costeer.app")
EXPECTED = (Refused, StoreError, CloudError, ValueError)  # ValueError: the engine's own checks (e.g. too long)
BUG = "something went wrong on the server ({kind}); it is logged there, and nothing was saved"


def refusal(name: str, exc: Exception) -> str:
    message = str(exc)
    log.info("refused %s: %s", name, message.encode("utf-8", "backslashreplace").decode("utf-8"))
    return message


def bug(name: str, exc: Exception) -> str:
    log.exception("unexpected error in %s", name)
    return BUG.format(kind=type(exc).__name__)


def warn(message: str):
    gr.Warning(html.escape(message, quote=False), title="Not done")


def info(message: str):
    """A confirmation toast; names in it (a user from an import file) stay text."""
    gr.Info(html.escape(message, quote=False))


def for_ui(fn, raises: bool = False):
    """A UI handler: refusals become a toast, outputs stay as they are. With `raises`, the event
    fails instead (for a handler whose `.success()` must not run; its only output is hidden)."""
    name = fn.__name__
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except EXPECTED as exc:
                warn(refusal(name, exc))
                yield gr.skip()
            except Exception as exc:  # noqa: BLE001  (a bug: logged with its traceback, shown in words)
                warn(bug(name, exc))
                yield gr.skip()
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EXPECTED as exc:
            message = refusal(name, exc)
        except Exception as exc:  # noqa: BLE001
            message = bug(name, exc)
        if raises:
            raise gr.Error(html.escape(message, quote=False), print_exception=False, title="Not done")
        warn(message)
        return gr.skip()
    return call


def api_names(message: str, params) -> str:
    """A refusal as the API's caller reads it: the field's UI label ("entry id", "noise sigma")
    becomes the argument's name ("entry_id", "sigma"), so the message names what was passed."""
    label, sep, rest = message.partition(": ")
    if not sep or label in params:
        return message
    for p in params:
        if p == label.replace(" ", "_") or p in label.split():
            return f"{p}: {rest}"
    return message


def for_api(fn):
    """A named endpoint: refusals become the client's error message, naming the argument."""
    signature = inspect.signature(fn, eval_str=True)  # types, not strings: view_api shows int, dict, …
    params = list(signature.parameters)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EXPECTED as exc:
            raise gr.Error(api_names(refusal(fn.__name__, exc), params), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(bug(fn.__name__, exc), print_exception=False) from None
    call.__signature__ = signature
    return call


def check_arity(demo):
    """Gradio checks that an event got enough input values before calling its handler, and raises
    a bare ValueError (an anonymous "Error" and a traceback) when it did not. Fill in the
    parameters that have defaults, as gradio_client does; name the missing ones otherwise."""
    original = demo.validate_inputs

    def validate_inputs(block_fn, inputs):
        if len(inputs) < len(block_fn.inputs):
            params = list(inspect.signature(block_fn.fn).parameters.values()) if block_fn.fn else []
            missing = params[len(inputs):len(block_fn.inputs)]
            if missing and all(p.default is not inspect.Parameter.empty for p in missing):
                inputs.extend(p.default for p in missing)  # in place: the caller reads this list
            else:
                names = [p.name for p in params] or [f"{len(block_fn.inputs)} values"]
                message = (f"{block_fn.api_name or block_fn.name}: missing "
                           f"{', '.join(p.name for p in missing if p.default is inspect.Parameter.empty)} "
                           f"(expected {', '.join(names)}; got {len(inputs)} values)")
                log.info("refused %s", message)
                raise gr.Error(message, print_exception=False)
        return original(block_fn, inputs)

    demo.validate_inputs = validate_inputs
    return demo
