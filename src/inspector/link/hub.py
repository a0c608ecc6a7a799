"""`LinkHub`: numbers each committed inspection, hands it to every sink, and holds what the PLC asked for.

The service calls `publish` once per committed inspection, after the record is stored and before the HTTP
answer is sent; the hub only numbers the result and hands it over (each sink queues it on its own thread), so a
dead PLC client or broker can never fail or delay an inspection.

What a PLC may ask for (by Modbus holding registers or OPC UA methods) lands here too: the part and measurement
id for the next inspection, the recipe (model) to use when the camera names none, and a review band change,
which the hub passes to the service through `LineControls`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from inspector.link.result import LineResult, LineStatus
from inspector.link.sink import Sink, SinkHealth, UnknownRecipe

log = logging.getLogger(__name__)
SEQUENCE_WRAP = 2**32  # sequence numbers fit a PLC's UDINT and two Modbus registers


class LineControls(Protocol):
    """What the service lets the line controller see and change."""

    def line_status(self) -> LineStatus:
        """The service's state now (`selected_recipe` is filled in by the hub)."""
        ...

    def recipes(self) -> tuple[str, ...]:
        """The served model names; recipe number n is recipes[n - 1] ("": unloaded). Cheap: asked per request."""
        ...

    def set_review_band(self, model: str, band: tuple[float, float] | None) -> None:
        """Change the review band of a model's active calibration at run time (raises `InspectorError`)."""
        ...

    def is_operator(self, key: str | None) -> bool:
        """Whether `key` grants operator rights (always, when the service has no keys: a test bench)."""
        ...


RecipeObserver = Callable[[str | None, str | None], None]


class LinkHub:
    """`on_recipe(old, new)` hears every change of the selected recipe (model names, None: none selected) before
    the PLC is answered; the service writes it to its audit log."""

    def __init__(self, sinks: Sequence[Sink], controls: LineControls, on_recipe: RecipeObserver | None = None) -> None:
        self.sinks = list(sinks)
        self.controls = controls
        self.on_recipe = on_recipe
        self._lock = threading.Lock()
        self._sequence = 0
        self._selected = 0  # recipe number the PLC selected; 0: none
        self._next_ids: tuple[str | None, str | None] = (None, None)

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open every sink; a sink that cannot open (port in use, bad certificate) stops the start-up, since a
        line that expects its PLC link must not run silently without it."""
        started: list[Sink] = []
        try:
            for sink in self.sinks:
                sink.start(self)
                started.append(sink)
                log.info("link %s started", sink.name)
        except Exception:
            for sink in started:
                sink.stop()
            raise

    def stop(self) -> None:
        for sink in self.sinks:
            try:
                sink.stop()
            except Exception:  # one sink failing to close must not keep the others open
                log.exception("link %s did not stop cleanly", sink.name)

    # ---- results ------------------------------------------------------------------------------------------------

    def publish(self, result: LineResult) -> LineResult:
        """Number the result and hand it to every sink; returns the numbered result. Never raises."""
        with self._lock:
            self._sequence = self._sequence % (SEQUENCE_WRAP - 1) + 1  # 1 .. 2**32 - 1; 0 means "no result yet"
            result = replace(result, sequence=self._sequence)
        for sink in self.sinks:
            try:
                sink.publish(result)
            except Exception:  # a sink's bug must not reach the camera's answer
                log.exception("link %s failed to take result %d", sink.name, result.sequence)
        return result

    def health(self) -> list[SinkHealth]:
        return [sink.health() for sink in self.sinks]

    # ---- what the PLC asks for ----------------------------------------------------------------------------------

    def status(self) -> LineStatus:
        return replace(self.controls.line_status(), selected_recipe=self._selected)

    def recipe_number(self, model: str) -> int:
        """The 1-based recipe number of a served model (0 if it is not served)."""
        recipes = self.controls.recipes()
        return recipes.index(model) + 1 if model in recipes else 0

    def select_recipe(self, recipe: int | str) -> str:
        """Use this model when the camera names none; by number (1-based) or name; 0 clears the selection."""
        recipes = self.controls.recipes()
        if isinstance(recipe, str):
            if not recipe or recipe not in recipes:
                raise UnknownRecipe(f"recipe {recipe!r} is not served (served: {', '.join(recipes)})")
            number = recipes.index(recipe) + 1
        else:
            if not 0 <= recipe <= len(recipes):
                raise UnknownRecipe(f"recipe number {recipe} is not served (1 to {len(recipes)}; 0 clears)")
            if recipe and not recipes[recipe - 1]:
                raise UnknownRecipe(f"recipe number {recipe} was unloaded; its number stays unused until a restart")
            number = recipe
        with self._lock:
            old, self._selected = self._selected, number
        name = recipes[number - 1] if number else ""
        log.info("PLC selected recipe %d (%s)", number, name or "none")
        if number != old and self.on_recipe is not None:
            self.on_recipe((recipes[old - 1] or None) if 0 < old <= len(recipes) else None, name or None)
        return name

    @property
    def selected_model(self) -> str | None:
        """The model the PLC selected, for requests that name none."""
        number = self._selected
        recipes = self.controls.recipes()
        return (recipes[number - 1] or None) if 0 < number <= len(recipes) else None

    def set_next_ids(self, part_id: str | None = None, meas_id: str | None = None) -> None:
        """The PLC's part and measurement id for the next inspection that arrives without its own."""
        with self._lock:
            current_part, current_meas = self._next_ids
            self._next_ids = (part_id or current_part, meas_id or current_meas)

    def take_next_ids(self) -> tuple[str | None, str | None]:
        """The ids the PLC set, once: the next inspection takes them, the one after does not."""
        with self._lock:
            ids, self._next_ids = self._next_ids, (None, None)
        return ids

    def set_review_band(self, model: str, band: tuple[float, float] | None) -> None:
        self.controls.set_review_band(model, band)

    def is_operator(self, key: str | None) -> bool:
        return self.controls.is_operator(key)
