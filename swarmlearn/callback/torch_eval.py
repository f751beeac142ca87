"""HPE's ``lossFunction`` / ``metricFunction`` for the PyTorch-based callbacks (PyTorch,
Lightning, Hugging Face), and the validation pass that reports them.

As HPE documents: ``lossFunction`` names a ``torch.nn`` loss class and ``lossFunctionArgs``
its constructor's keyword arguments (``"CrossEntropyLoss"``, ``{"reduction": "sum"}``);
``metricFunction`` names any ``torchmetrics`` metric class and ``metricFunctionArgs`` its
arguments (``"F1Score"``, ``{"task": "multiclass", "num_classes": 10}``; ``"Accuracy"``
alone, as swarmlearn took it before, is the argmax accuracy, no torchmetrics needed). Both are
built once, when the callback is made, so a wrong name or argument is one line then, naming
what exists (with a did-you-mean), never a traceback in the middle of training.

The loss and metric are computed on ``adsValData`` before each sync and at the end (PERFDATA,
adaptive sync). The loss is the mean over samples whatever the loss's ``reduction``; the metric
is the metric's ``compute()`` over the whole set.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from swarmlearn.callback.core import SwarmError

#: Keyword arguments every torchmetrics Metric takes (``Metric.__init__``'s ``**kwargs``).
METRIC_BASE_ARGS = (
    "compute_on_cpu",
    "dist_sync_on_step",
    "process_group",
    "dist_sync_fn",
    "distributed_available_fn",
    "sync_on_compute",
    "compute_with_cache",
)


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _arguments(option: str, args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
        raise SwarmError(f"{option} must be a dict of keyword arguments, got {args!r}")
    return dict(args)


def _parameters(factory: type) -> tuple[list[str], bool]:
    """The named keyword parameters of a class's ``__new__`` and ``__init__`` (up to the first
    that takes ``**kwargs`` only), and whether it takes any keyword at all."""
    names: list[str] = []
    open_ended = False
    for method in (getattr(factory, "__new__", None), getattr(factory, "__init__", None)):
        if method is None or method in (object.__new__, object.__init__):
            continue
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):
            return names, True
        for name, parameter in list(signature.parameters.items())[1:]:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL and name not in names:
                names.append(name)
    return names, open_ended


def _build(option: str, factory: type, args: dict[str, Any], base: tuple[str, ...]) -> Any:
    names, open_ended = _parameters(factory)
    valid = [*names, *base]
    for key in args:
        if key not in valid and not (open_ended and not base):
            raise SwarmError(
                f"{option}Args for {factory.__name__}: unknown argument {key!r}"
                f"{_hint(key, valid)} ({factory.__name__} takes: {', '.join(valid)})"
            )
    try:
        return factory(**args)
    except (TypeError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SwarmError(
            f"{option}={factory.__name__!r} with {option}Args {args}: {message}"
            f" ({factory.__name__} takes: {', '.join(valid)})"
        ) from None


def loss_names() -> list[str]:
    return sorted(
        name
        for name, value in vars(torch.nn).items()
        if name.endswith("Loss") and isinstance(value, type) and issubclass(value, torch.nn.Module)
    )


def loss_function(name: Any, args: Any) -> torch.nn.Module | None:
    """``lossFunction`` / ``lossFunctionArgs``: a torch.nn loss, built (None: no loss)."""
    if name is None:
        return None
    arguments = _arguments("lossFunctionArgs", args)
    names = loss_names()
    if str(name) not in names:
        raise SwarmError(
            f"lossFunction {name!r} is not a torch.nn loss{_hint(str(name), names)}"
            f" (torch.nn has: {', '.join(names)})"
        )
    module: torch.nn.Module = _build("lossFunction", getattr(torch.nn, str(name)), arguments, ())
    return module


def metric_names() -> list[str]:
    import torchmetrics

    return sorted(
        name
        for name, value in vars(torchmetrics).items()
        if isinstance(value, type) and issubclass(value, torchmetrics.Metric) and name[0] != "_"
    )


def metric_function(name: Any, args: Any) -> Any:
    """``metricFunction`` / ``metricFunctionArgs``: a torchmetrics Metric, built (None: none)."""
    if name is None:
        return None
    if name == "Accuracy" and args is None:
        return ArgmaxAccuracy()  # swarmlearn's before torchmetrics: no task needed
    arguments = _arguments("metricFunctionArgs", args)
    try:
        import torchmetrics
    except ImportError:
        raise SwarmError(
            f"metricFunction {name!r} needs torchmetrics: pip install 'swarmlearn[metrics]'"
        ) from None
    names = metric_names()
    if str(name) not in names:
        raise SwarmError(
            f"metricFunction {name!r} is not a torchmetrics metric{_hint(str(name), names)}"
            f" (torchmetrics has: {', '.join(names)})"
        )
    return _build("metricFunction", getattr(torchmetrics, str(name)), arguments, METRIC_BASE_ARGS)


class ArgmaxAccuracy:
    """``metricFunction="Accuracy"`` without ``metricFunctionArgs``: the share of samples
    whose highest output is the target (torchmetrics' Accuracy needs a ``task``)."""

    def __init__(self) -> None:
        self.correct = 0
        self.count = 0

    def reset(self) -> None:
        self.correct = self.count = 0

    def to(self, device: torch.device) -> ArgmaxAccuracy:
        return self

    def update(self, out: torch.Tensor, target: torch.Tensor) -> None:
        self.correct += int((out.argmax(dim=1) == target).sum())
        self.count += len(target)

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.correct / max(self.count, 1))


def _split(batch: Any) -> tuple[Any, torch.Tensor]:
    """A batch's inputs and targets: ``(x, y)``, or a Hugging Face dict with ``labels``."""
    if isinstance(batch, Mapping):
        inputs = dict(batch)
        labels = inputs.pop("labels", None)
        if labels is None:
            labels = inputs.pop("label", None)
        if labels is None:
            raise SwarmError("adsValData: a batch of dicts needs a 'labels' (or 'label') entry")
        return inputs, labels
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], batch[1]
    raise SwarmError("adsValData: each batch must be (inputs, targets) or a dict with 'labels'")


def _forward(model: torch.nn.Module, inputs: Any, device: torch.device) -> torch.Tensor:
    if isinstance(inputs, Mapping):
        out = model(**{k: v.to(device) for k, v in inputs.items()})
    else:
        out = model(inputs.to(device))
    logits = getattr(out, "logits", out)  # Hugging Face models return an output object
    assert isinstance(logits, torch.Tensor)
    return logits


def evaluate(
    model: torch.nn.Module, loader: Iterable[Any], loss: torch.nn.Module | None, metric: Any
) -> tuple[float | None, float | None]:
    """The mean loss per sample and the metric over ``loader`` (None where not asked for)."""
    if loss is None and metric is None:
        return None, None
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.zeros(0)).device
    if metric is not None:
        metric.reset()
        metric.to(device)
    total, count = 0.0, 0
    summed = getattr(loss, "reduction", "mean") == "sum"
    with torch.no_grad():
        for batch in loader:
            inputs, target = _split(batch)
            target = target.to(device)
            out = _forward(model, inputs, device)
            if loss is not None:
                value = float(loss(out, target))
                total += value if summed else value * len(target)
            if metric is not None:
                metric.update(out, target)
            count += len(target)
    model.train(was_training)
    mean_loss = total / max(count, 1) if loss is not None else None
    metric_value = None
    if metric is not None and count:
        metric_value = float(metric.compute().float().mean())
    return mean_loss, metric_value
