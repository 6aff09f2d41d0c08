"""A scheduling policy written in Python: prefer (or require) nodes carrying a label.

Configuration (the WasmPlugin's spec.config):
    {"label": "disktype", "value": "ssd", "required": false}

Scores nodes with the label at 100 and the rest at 0; with "required": true it also filters out
nodes without the label. Built with componentize-py against the same WIT world
(flotilla:plugin scheduler-policy) as the Rust policies:

    componentize-py -d ../../wit/plugin -w scheduler-policy componentize app -o label-preference.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, log, scheduling

WIT_VERSION = "0.1.1"
nodes = {}
settings = {}


def load_settings():
    global settings
    try:
        settings = json.loads(config.get() or "{}")
    except ValueError as error:
        raise Err(f"configuration is not JSON: {error}")
    if not isinstance(settings.get("label"), str) or not settings["label"]:
        raise Err('configuration needs "label", the node label to look for')


def wanted(node):
    labels = dict(node.labels)
    if settings["label"] not in labels:
        return False
    value = settings.get("value")
    return value is None or labels[settings["label"]] == value


class Meta(exports.Meta):
    def info(self):
        return exports.meta.PluginInfo(
            name="label-preference-python", version="1.0.0", wit_version=WIT_VERSION
        )

    def self_check(self):
        load_settings()
        log.log(log.Level.INFO, f"preferring nodes with {settings['label']}")


class Scheduler(exports.Scheduler):
    def describe(self):
        return scheduling.Capabilities(filter=True, score=True, wants_pods=False)

    def update(self, changes):
        for change in changes:
            if isinstance(change, scheduling.Change_NodeSet):
                index, node = change.value
                nodes[index] = node
            elif isinstance(change, scheduling.Change_NodeRemoved):
                nodes.pop(change.value, None)

    def prepare(self, pod):
        if not settings:
            load_settings()
        return scheduling.Prepared_Proceed()

    def filter(self, candidates):
        if not settings.get("required"):
            return scheduling.FilterResult(rejected=[], reasons=[])
        reason = f"node(s) didn't have label {settings['label']}"
        rejected = [
            scheduling.Rejection(node=index, reason=0)
            for index in candidates
            if index in nodes and not wanted(nodes[index])
        ]
        return scheduling.FilterResult(rejected=rejected, reasons=[reason] if rejected else [])

    def score(self, candidates):
        return [100 if index in nodes and wanted(nodes[index]) else 0 for index in candidates]
