"""The OPC UA address space of the vision system: built from the OPC 40100 NodeSet2 when one is given, otherwise
in the same shape from the base UA model, and the writes that keep it current.

Both ways give clients the same browse paths (MV: the Machine Vision namespace, INS: the server's own):

    Objects/INS:VisionSystem                      MV:VisionSystemType (NodeSet) or a plain object; ResultReady source
      MV:VisionStateMachine/CurrentState          LocalizedText Preoperational | Halted | Error | Operational
        CurrentState/Id                           NodeId of that state (the standard's state node with the NodeSet)
      INS:Inspector                               folder: the inspector's own values and methods
        State, StateCode, Ready, Busy, ModelsLoaded, Error, DriftAlarm, Recipes, SelectedRecipe, SelectedModel
        LastResult/ Sequence, ResultId, PartId, MeasId, CreationTime, Model, Recipe, ModelVersion, Verdict,
                    VerdictCode, Score, NormalizedScore, Threshold, Width, Height, RegionCount,
                    Regions/ X, Y, Width, Height, Area, Peak (arrays, largest region first),
                    ProcessingTimes/ InferenceMs, TotalMs, StageNames, StageMs
        SelectRecipe(Recipe) -> Model,  SetReviewBand(Model, Low, High)

`INS:ResultReadyEventType` is fired from the VisionSystem (and the Server object) after LastResult is written.
With the NodeSet it is a subtype of MV:ResultReadyEventType and also fills the standard's fields (ResultId,
CreationTime, JobId, InternalRecipeId, ResultState, PartId, MeasId, ProcessingTimes as MV structures); its own
fields are named so that they never clash with the standard's (clients key event fields by name).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import Node, Server, ua
from asyncua.common.instantiate_util import instantiate
from asyncua.server.event_generator import EventGenerator

from inspector.link.result import STATE_CODES, LineResult, LineStatus, MachineState

MV_NS = "http://opcfoundation.org/UA/MachineVision"
INSPECTOR_NS = "urn:inspector:opcua"
ROOT = "VisionSystem"
FOLDER = f"{ROOT}.Inspector"
# NodeIds the OPC 40100 NodeSet fixes (namespace MV).
MV_VISION_SYSTEM_TYPE = 1003
MV_VISION_STATE_MACHINE_TYPE = 1017
MV_RESULT_READY_EVENT_TYPE = 1024
# The StateNumber each state has in the standard's VisionStateMachineType.
MV_STATE_NUMBERS: dict[MachineState, int] = {"Preoperational": 1, "Halted": 2, "Error": 3, "Operational": 4}
RESULT_STATE_COMPLETED = 1  # MV ResultStateDataType: processing was carried out correctly

V = ua.VariantType
STATUS_VARIABLES: dict[str, tuple[Any, ua.VariantType]] = {
    "State": ("Preoperational", V.String),
    "StateCode": (0, V.Byte),
    "Ready": (False, V.Boolean),
    "Busy": (False, V.Boolean),
    "ModelsLoaded": (False, V.Boolean),
    "Error": ("", V.String),
    "DriftAlarm": (False, V.Boolean),
    "Recipes": ([], V.String),
    "SelectedRecipe": (0, V.UInt32),
    "SelectedModel": ("", V.String),
}
RESULT_VARIABLES: dict[str, tuple[Any, ua.VariantType]] = {
    "Sequence": (0, V.UInt32),  # written last: when it changes, every other value belongs to it
    "ResultId": ("", V.String),
    "PartId": ("", V.String),
    "MeasId": ("", V.String),
    "CreationTime": (datetime(1601, 1, 1, tzinfo=UTC), V.DateTime),
    "Model": ("", V.String),
    "Recipe": (0, V.UInt32),
    "ModelVersion": ("", V.String),
    "Verdict": ("", V.String),
    "VerdictCode": (0, V.Byte),
    "Score": (math.nan, V.Double),
    "NormalizedScore": (math.nan, V.Double),
    "Threshold": (math.nan, V.Double),
    "Width": (0, V.UInt32),
    "Height": (0, V.UInt32),
    "RegionCount": (0, V.UInt32),
}
REGION_ARRAYS: dict[str, ua.VariantType] = {
    "X": V.Int32,
    "Y": V.Int32,
    "Width": V.Int32,
    "Height": V.Int32,
    "Area": V.Int32,
    "Peak": V.Double,
}
TIMING_VARIABLES: dict[str, tuple[Any, ua.VariantType]] = {
    "InferenceMs": (0.0, V.Double),
    "TotalMs": (0.0, V.Double),
    "StageNames": ([], V.String),
    "StageMs": ([], V.Double),
}
EVENT_FIELDS: list[tuple[str, ua.VariantType]] = [
    ("Sequence", V.UInt32),
    ("InspectionId", V.String),
    ("Verdict", V.String),
    ("VerdictCode", V.Byte),
    ("Score", V.Double),
    ("NormalizedScore", V.Double),
    ("Model", V.String),
    ("Recipe", V.UInt32),
]

# asyncua takes an event field's variant type from the type's default value, which the NodeSet leaves empty.
MV_EVENT_FIELD_TYPES: dict[str, ua.VariantType] = {
    "CreationTime": V.DateTime,
    "IsPartial": V.Boolean,
    "ResultState": V.Int32,
    "InternalRecipeId": V.ExtensionObject,
    "InternalConfigurationId": V.ExtensionObject,
}

MethodHandler = Callable[..., Awaitable[Any]]


@dataclass
class AddressSpace:
    """The nodes the sink writes, and the event it fires, after the tree is built."""

    server: Server
    current_state: Node
    current_state_id: Node
    state_ids: dict[MachineState, ua.NodeId]
    status: dict[str, Node]
    result: dict[str, Node]
    regions: dict[str, Node]
    timings: dict[str, Node]
    operator_methods: set[ua.NodeId]  # calls to these need operator rights
    events: list[EventGenerator]  # the same event, from the VisionSystem and from the Server object
    standard: bool  # built from the NodeSet: the event carries the MV fields too

    async def write_status(self, status: LineStatus) -> None:
        selected = (
            status.recipes[status.selected_recipe - 1] if 0 < status.selected_recipe <= len(status.recipes) else ""
        )
        values: dict[str, Any] = {
            "State": status.state,
            "StateCode": STATE_CODES[status.state],
            "Ready": status.ready,
            "Busy": status.busy,
            "ModelsLoaded": status.models_loaded,
            "Error": status.error or "",
            "DriftAlarm": status.drift,
            "Recipes": list(status.recipes),
            "SelectedRecipe": status.selected_recipe,
            "SelectedModel": selected,
        }
        for name, value in values.items():
            await self._write(self.status[name], value, STATUS_VARIABLES[name][1])
        await self._write(self.current_state, ua.LocalizedText(status.state), V.LocalizedText)
        await self._write(self.current_state_id, self.state_ids[status.state], V.NodeId)

    async def write_result(self, result: LineResult) -> None:
        """Write LastResult (Sequence last), then fire ResultReady."""
        regions = result.regions
        for name, values in (
            ("X", [r.x for r in regions]),
            ("Y", [r.y for r in regions]),
            ("Width", [r.width for r in regions]),
            ("Height", [r.height for r in regions]),
            ("Area", [r.area for r in regions]),
            ("Peak", [float(r.peak) for r in regions]),
        ):
            await self._write(self.regions[name], values, REGION_ARRAYS[name])
        stages = [k for k in result.timings_ms if k != "total"]
        timings: dict[str, Any] = {
            "InferenceMs": result.inference_ms,
            "TotalMs": result.total_ms,
            "StageNames": stages,
            "StageMs": [float(result.timings_ms[k]) for k in stages],
        }
        for name, value in timings.items():
            await self._write(self.timings[name], value, TIMING_VARIABLES[name][1])
        fields = result_fields(result)
        for name, value in fields.items():
            if name != "Sequence":
                await self._write(self.result[name], value, RESULT_VARIABLES[name][1])
        await self._write(self.result["Sequence"], fields["Sequence"], V.UInt32)
        await self._fire(result)

    async def _write(self, node: Node, value: Any, vtype: ua.VariantType) -> None:
        await self.server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(value, vtype)))

    async def _fire(self, result: LineResult) -> None:
        created = datetime.fromtimestamp(result.created, UTC)
        fields: dict[str, Any] = {
            "Sequence": result.sequence,
            "InspectionId": result.inspection_id,
            "Verdict": result.verdict or "",
            "VerdictCode": result.verdict_code,
            "Score": float(result.score),
            "NormalizedScore": _number(result.normalized_score),
            "Model": result.model,
            "Recipe": result.recipe,
        }
        if self.standard:
            fields.update(standard_event_fields(result, created))
        message = f"result {result.sequence}: {result.verdict or 'not judged'} ({result.model})"
        for generator in self.events:
            for name, value in fields.items():
                setattr(generator.event, name, value)
            await generator.trigger(time_attr=created, message=message)


def result_fields(result: LineResult) -> dict[str, Any]:
    """LastResult's scalar values for one result (None becomes "" or NaN: PLCs have no null)."""
    return {
        "Sequence": result.sequence,
        "ResultId": result.inspection_id,
        "PartId": result.part_id or "",
        "MeasId": result.meas_id or "",
        "CreationTime": datetime.fromtimestamp(result.created, UTC),
        "Model": result.model,
        "Recipe": result.recipe,
        "ModelVersion": result.model_version,
        "Verdict": result.verdict or "",
        "VerdictCode": result.verdict_code,
        "Score": float(result.score),
        "NormalizedScore": _number(result.normalized_score),
        "Threshold": _number(result.threshold),
        "Width": result.width,
        "Height": result.height,
        "RegionCount": len(result.regions),
    }


def standard_event_fields(result: LineResult, created: datetime) -> dict[str, Any]:
    """The MV:ResultReadyEventType fields, as the structures the NodeSet defines (its import registers them)."""

    def struct(name: str, **values: Any) -> Any:
        return getattr(ua, name)(**values)

    return {
        "ResultId": struct("ResultIdDataType", Id=result.inspection_id),
        "CreationTime": created,
        "IsPartial": False,
        "JobId": struct("JobIdDataType", Id=str(result.sequence)),
        "InternalRecipeId": struct("RecipeIdInternalDataType", Id=result.model, Version=result.model_version),
        "InternalConfigurationId": struct("ConfigurationIdDataType", Id=result.model_version),
        "ResultState": RESULT_STATE_COMPLETED,
        "PartId": struct("PartIdDataType", Id=result.part_id) if result.part_id else None,
        "MeasId": struct("MeasIdDataType", Id=result.meas_id) if result.meas_id else None,
        "ProcessingTimes": struct(
            "ProcessingTimesDataType",
            StartTime=created - timedelta(milliseconds=result.total_ms),
            EndTime=created,
            ProcessingDuration=result.inference_ms,
        ),
    }


def node_id(identifier: str | int, ns: int = 0) -> ua.NodeId:
    """A NodeId from plain values (asyncua's annotations ask for its own int and str subclasses)."""
    value = ua.String(identifier) if isinstance(identifier, str) else ua.Int32(identifier)
    return ua.NodeId(value, ua.Int16(ns))


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


# ---- building ---------------------------------------------------------------------------------------------------


async def build(
    server: Server,
    nodeset: Path | None,
    display_name: str,
    select_recipe: MethodHandler,
    set_review_band: MethodHandler,
) -> AddressSpace:
    """Register the namespaces (MV first, so both ways give the same indexes) and build the tree."""
    if nodeset is not None:
        await server.import_xml(str(nodeset))
    mv = await server.register_namespace(MV_NS)
    ins = await server.register_namespace(INSPECTOR_NS)
    objects = server.nodes.objects
    root_id, root_name = node_id(ROOT, ins), ua.QualifiedName(ROOT, ins)
    if nodeset is not None:
        vision_system, state_ids = await _instantiate_standard(server, objects, root_id, root_name, mv)
    else:
        vision_system, state_ids = await _build_same_shape(server, objects, root_id, root_name, mv)
    await vision_system.write_attribute(
        ua.AttributeIds.DisplayName, ua.DataValue(ua.Variant(ua.LocalizedText(display_name), V.LocalizedText))
    )
    machine = await vision_system.get_child(ua.QualifiedName("VisionStateMachine", mv))
    current_state = await machine.get_child(ua.QualifiedName("CurrentState", 0))
    current_state_id = await current_state.get_child(ua.QualifiedName("Id", 0))

    folder = await vision_system.add_folder(node_id(FOLDER, ins), ua.QualifiedName("Inspector", ins))
    status = {name: await _variable(folder, FOLDER, ins, name, *spec) for name, spec in STATUS_VARIABLES.items()}
    last = await folder.add_object(node_id(f"{FOLDER}.LastResult", ins), ua.QualifiedName("LastResult", ins))
    result = {
        name: await _variable(last, f"{FOLDER}.LastResult", ins, name, *spec) for name, spec in RESULT_VARIABLES.items()
    }
    regions_id = f"{FOLDER}.LastResult.Regions"
    regions_node = await last.add_object(node_id(regions_id, ins), ua.QualifiedName("Regions", ins))
    regions = {
        name: await _variable(regions_node, regions_id, ins, name, [], vtype) for name, vtype in REGION_ARRAYS.items()
    }
    timings_id = f"{FOLDER}.LastResult.ProcessingTimes"
    timings_node = await last.add_object(node_id(timings_id, ins), ua.QualifiedName("ProcessingTimes", ins))
    timings = {
        name: await _variable(timings_node, timings_id, ins, name, *spec) for name, spec in TIMING_VARIABLES.items()
    }
    methods = {
        await _method(
            folder,
            ins,
            "SelectRecipe",
            select_recipe,
            [("Recipe", V.String, "model name, or its recipe number as text; empty or 0 clears the selection")],
            [("Model", V.String, "the selected model; empty when cleared")],
        ),
        await _method(
            folder,
            ins,
            "SetReviewBand",
            set_review_band,
            [
                ("Model", V.String, "model name; empty: the selected recipe, or the only model"),
                ("Low", V.Double, "lower edge as a multiple of the threshold, 0 < Low <= 1; 0 and 0 remove the band"),
                ("High", V.Double, "upper edge as a multiple of the threshold, High >= 1"),
            ],
            [],
        ),
    }
    events = await _result_ready(server, vision_system, ins, mv, standard=nodeset is not None)
    return AddressSpace(
        server=server,
        current_state=current_state,
        current_state_id=current_state_id,
        state_ids=state_ids,
        status=status,
        result=result,
        regions=regions,
        timings=timings,
        operator_methods=methods,
        events=events,
        standard=nodeset is not None,
    )


async def _instantiate_standard(
    server: Server, objects: Node, nodeid: ua.NodeId, name: ua.QualifiedName, mv: int
) -> tuple[Node, dict[MachineState, ua.NodeId]]:
    """A real MV:VisionSystemType with its mandatory parts; CurrentState/Id points at the standard's states."""
    vision_type = server.get_node(node_id(MV_VISION_SYSTEM_TYPE, mv))
    created = await instantiate(objects, vision_type, nodeid=nodeid, bname=name, instantiate_optional=False)
    machine_type = server.get_node(node_id(MV_VISION_STATE_MACHINE_TYPE, mv))
    state_ids = {state: (await machine_type.get_child(ua.QualifiedName(state, mv))).nodeid for state in STATE_CODES}
    return server.get_node(created[0]), state_ids


async def _build_same_shape(
    server: Server, objects: Node, nodeid: ua.NodeId, name: ua.QualifiedName, mv: int
) -> tuple[Node, dict[MachineState, ua.NodeId]]:
    """The parts of VisionSystemType the sink uses, from base UA types, with the standard's browse names."""
    vision_system = await objects.add_object(nodeid, name)
    machine_id = f"{ROOT}.VisionStateMachine"
    machine = await vision_system.add_object(
        node_id(machine_id, nodeid.NamespaceIndex), ua.QualifiedName("VisionStateMachine", mv)
    )
    await instantiate(
        machine,
        server.get_node(node_id(ua.ObjectIds.FiniteStateVariableType)),
        nodeid=node_id(f"{machine_id}.CurrentState", nodeid.NamespaceIndex),
        bname=ua.QualifiedName("CurrentState", 0),
        instantiate_optional=False,
    )
    state_ids: dict[MachineState, ua.NodeId] = {}
    for state, number in MV_STATE_NUMBERS.items():
        state_node = await machine.add_object(
            node_id(f"{machine_id}.{state}", nodeid.NamespaceIndex),
            ua.QualifiedName(state, mv),
            objecttype=ua.ObjectIds.StateType,
            instantiate_optional=False,
        )
        number_node = await state_node.get_child(ua.QualifiedName("StateNumber", 0))
        await number_node.write_value(ua.Variant(number, V.UInt32))
        state_ids[state] = state_node.nodeid
    return vision_system, state_ids


async def _variable(parent: Node, prefix: str, ns: int, name: str, value: Any, vtype: ua.VariantType) -> Node:
    node = await parent.add_variable(node_id(f"{prefix}.{name}", ns), ua.QualifiedName(name, ns), value, vtype)
    if isinstance(value, list):  # one-dimensional, of any length
        await node.write_attribute(ua.AttributeIds.ValueRank, ua.DataValue(ua.Variant(1, V.Int32)))
        await node.write_attribute(ua.AttributeIds.ArrayDimensions, ua.DataValue(ua.Variant([0], V.UInt32)))
    return node


async def _method(
    parent: Node,
    ns: int,
    name: str,
    handler: MethodHandler,
    inputs: list[tuple[str, ua.VariantType, str]],
    outputs: list[tuple[str, ua.VariantType, str]],
) -> ua.NodeId:
    def arguments(specs: list[tuple[str, ua.VariantType, str]]) -> list[ua.Argument]:
        return [
            ua.Argument(
                Name=arg, DataType=node_id(vtype.value), ValueRank=-1, Description=ua.LocalizedText(description)
            )
            for arg, vtype, description in specs
        ]

    node = await parent.add_method(
        node_id(f"{FOLDER}.{name}", ns), ua.QualifiedName(name, ns), handler, arguments(inputs), arguments(outputs)
    )
    return node.nodeid


async def _result_ready(server: Server, vision_system: Node, ins: int, mv: int, standard: bool) -> list[EventGenerator]:
    base = node_id(MV_RESULT_READY_EVENT_TYPE, mv) if standard else node_id(ua.ObjectIds.BaseEventType)
    event_type = await server.create_custom_event_type(
        node_id("ResultReadyEventType", ins), ua.QualifiedName("ResultReadyEventType", ins), base, []
    )
    for field, vtype in EVENT_FIELDS:
        await event_type.add_property(
            node_id(f"ResultReadyEventType.{field}", ins),
            ua.QualifiedName(field, ins),
            ua.get_default_value(vtype),
            vtype,
        )
    source = await server.get_event_generator(event_type, vision_system.nodeid)
    everything = await server.get_event_generator(event_type, node_id(ua.ObjectIds.Server))
    everything.event.SourceNode = vision_system.nodeid  # the same event: it comes from the vision system
    everything.event.SourceName = source.event.SourceName
    await server.nodes.server.add_reference(vision_system.nodeid, ua.ObjectIds.HasNotifier)
    if standard:
        for generator in (source, everything):
            generator.event.data_types.update(MV_EVENT_FIELD_TYPES)
    return [source, everything]
