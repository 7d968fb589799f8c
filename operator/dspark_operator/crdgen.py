"""Generate the DSparkTrainingJob CustomResourceDefinition from the pydantic models.

    python -m dspark_operator.crdgen            # print the CRD YAML
    python -m dspark_operator.crdgen --write    # (re)write crds/dsparktrainingjobs.dspark.io.yaml
    python -m dspark_operator.crdgen --check    # exit 1 when the committed file is out of date

The pydantic JSON schema is turned into a Kubernetes *structural* schema: `$ref`s are inlined,
`Optional` unions collapse to the non-null branch, `anyOf` survives only for int-or-string
quantities, JSON-Schema-2020 exclusive bounds become OpenAPI-v3 booleans, `title`s go, nested
objects with defaults get `default: {}` (so the API server fills in their defaults), and CEL rules
(`x-kubernetes-validations`) are attached for cross-field checks and immutable fields.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from dspark_operator.api.job import (
    MAX_JOB_NAME_LENGTH,
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    RESERVED_TRAINER_ENV_NAMES,
    RESERVED_TRAINER_PORTS,
)
from dspark_operator.api.paths import ABSOLUTE_DIR, RELATIVE_DIR, cel_mount_path_rule
from dspark_operator.api.spec import LABEL_VALUE, NAMED, DSparkTrainingJobSpec
from dspark_operator.api.status import DSparkTrainingJobStatus
from dspark_operator.constants import CATEGORIES, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from dspark_operator.generated import dump_yaml, generated_file_main

Schema = dict[str, Any]
Path_ = tuple[str, ...]

CRD_FILE_NAME = f"{PLURAL}.{GROUP}.yaml"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[2] / "crds" / CRD_FILE_NAME

HEADER = (
    "# Generated from the pydantic models in operator/dspark_operator/api by\n"
    "#   python -m dspark_operator.crdgen --write\n"
    "# Do not edit by hand; a test fails when this file and the models disagree.\n"
)

# Keys a CRD schema accepts (apiextensions.k8s.io/v1 JSONSchemaProps, minus the ones structural
# schemas forbid or we never need).
ALLOWED_KEYS = frozenset(
    {
        "description",
        "type",
        "format",
        "default",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "multipleOf",
        "enum",
        "maxProperties",
        "minProperties",
        "required",
        "items",
        "properties",
        "additionalProperties",
        "anyOf",
        "nullable",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    }
)


def _immutable(message: str) -> list[dict[str, str]]:
    return [{"rule": "self == oldSelf", "message": message}]


def _optional_immutable(field: str, message: str) -> dict[str, str]:
    return {
        "rule": f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})",
        "message": message,
        "fieldPath": f".{field}",
    }


def _named(field: str, example: str) -> list[dict[str, str]]:
    return [
        {
            "rule": f"self.matches(r'{NAMED}')",
            "message": f"{field} must not be blank or start/end with whitespace; name it, e.g. {example}",
        }
    ]


def _relative_dir(field: str, example: str) -> list[dict[str, str]]:
    return [
        {
            "rule": f"self.matches(r'{RELATIVE_DIR}')",
            "message": (
                f"{field} must be a relative directory inside the output volume (trainer.output.mountPath), without "
                f"a leading '/' or '.'/'..' segments, e.g. {example}: anything outside the volume is written to the "
                "pod's ephemeral filesystem and lost with the pod"
            ),
        }
    ]


def _reserved_env(section: str, names: frozenset[str]) -> dict[str, str]:
    prefixes = " && ".join(f"!e.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    listed = ", ".join(f"'{n}'" for n in sorted(names))
    shown = ", ".join([f"{p}*" for p in RESERVED_ENV_PREFIXES] + sorted(names))
    return {
        "rule": f"self.all(e, {prefixes} && !(e.name in [{listed}]))",
        "message": f"{section}.env may not set a name the operator sets or reserves: {shown}",
    }


def _no_device_resources(resources: str, field: str) -> dict[str, str]:
    names = ("self.scheduling.gpuResourceName", "self.transport.rdmaResourceName")
    parts = [
        f"(has(self.{resources}.{kind}) && {name} in self.{resources}.{kind})"
        for name in names
        for kind in ("requests", "limits")
    ]
    return {
        "rule": f"!({' || '.join(parts)})",
        "message": (
            f"{resources} may not list scheduling.gpuResourceName or transport.rdmaResourceName: "
            f"the operator adds GPUs from {field} and RDMA devices from transport.rdmaResourceCount"
        ),
        "fieldPath": f".{resources}",
    }


def _toleration_rules() -> list[dict[str, str]]:
    return [
        {
            "rule": "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "message": "a toleration with operator Exists must not have a value; drop value or use operator Equal",
            "fieldPath": ".value",
        },
        {
            "rule": "(has(self.key) && self.key != '') || self.operator == 'Exists'",
            "message": "a toleration without key must use operator Exists (it matches every taint)",
            "fieldPath": ".operator",
        },
        {
            "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "message": "tolerationSeconds only applies with effect NoExecute; set effect: NoExecute or drop it",
            "fieldPath": ".tolerationSeconds",
        },
    ]


GPUS = "(self.trainer.gpusPerNode > 0 ? self.trainer.gpusPerNode : 1)"
RANKS_X_MICRO = f"self.trainer.nodes * {GPUS} * self.trainer.schedule.microBatchSize"
OUTPUT_IMMUTABLE = {
    "mountPath": "the running job's checkpoints and draft are on the volume mounted there",
    "draftDir": "the running job exports its draft there",
    "checkpointDir": "the running job's checkpoints are there (a change would restart training from scratch)",
}

DRAFT_IMMUTABLE = (
    "blockSize",
    "numDraftLayers",
    "numTargetLayersCaptured",
    "markovHeadType",
    "markovRank",
    "enableConfidenceHead",
    "confidenceHeadWithMarkov",
)

# CEL rules, by property path from the root of the object.
RULES: dict[Path_, list[dict[str, str]]] = {
    (): [
        {
            "rule": (
                f"self.metadata.name.size() <= {MAX_JOB_NAME_LENGTH} && "
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
            ),
            "message": (
                f"metadata.name must be at most {MAX_JOB_NAME_LENGTH} characters of a-z, 0-9 and '-', start with a "
                "letter and end with a letter or digit (it prefixes the names of Services and pods)"
            ),
        }
    ],
    ("spec",): [
        {
            "rule": "has(self.trainer.output.claimName) != self.trainer.output.ephemeral",
            "message": (
                "trainer.output needs exactly one of claimName (a PersistentVolumeClaim for checkpoints and the "
                "draft) and ephemeral: true (an emptyDir, lost with the trainer pods)"
            ),
            "fieldPath": ".trainer.output.claimName",
        },
        {
            "rule": "!has(self.dataset.regenerate) || has(self.trainer.output.claimName)",
            "message": (
                "dataset.regenerate needs trainer.output.claimName: the regeneration Job writes the dataset to the "
                "output volume and the trainer pods read it there"
            ),
            "fieldPath": ".trainer.output.claimName",
        },
        {
            "rule": f"self.trainer.schedule.globalBatchSize % ({RANKS_X_MICRO}) == 0",
            "message": (
                "trainer.schedule.globalBatchSize must be a multiple of trainer.nodes x max(trainer.gpusPerNode, 1) x "
                "trainer.schedule.microBatchSize (an optimizer step takes the same number of samples on every rank)"
            ),
            "fieldPath": ".trainer.schedule.globalBatchSize",
        },
        {
            "rule": (
                "self.inference.engine != 'sglang' || !has(self.draft.targetLayerIds) || "
                "self.draft.targetLayerIds.all(i, i >= 0)"
            ),
            "message": (
                "draft.targetLayerIds: SGLang cannot capture the embedding output (-1); use layers >= 0 or "
                "inference.engine: reference"
            ),
            "fieldPath": ".draft.targetLayerIds",
        },
        {
            "rule": "!has(self.inference.contextLength) || self.inference.contextLength > self.dataset.maxLength",
            "message": (
                "inference.contextLength must exceed dataset.maxLength (a capture sends up to maxLength tokens and "
                "generates one); raise it or leave it unset (default: maxLength + 1)"
            ),
            "fieldPath": ".inference.contextLength",
        },
        {
            "rule": "self.trainer.gpusPerNode > 0 || self.trainer.optimizer.masterWeights != 'split'",
            "message": (
                "trainer.optimizer.masterWeights split needs bf16 parameters, that is GPUs: set trainer.gpusPerNode "
                "> 0 or masterWeights: fp32"
            ),
            "fieldPath": ".trainer.optimizer.masterWeights",
        },
        {
            "rule": (
                "self.transport.deviceNames == '' || self.transport.protocol == 'tcp' || !has(self.trainer.env) || "
                "!self.trainer.env.exists(e, e.name == 'NCCL_IB_HCA')"
            ),
            "message": (
                "trainer.env NCCL_IB_HCA is set by the operator from transport.deviceNames; give the devices in one "
                "place"
            ),
            "fieldPath": ".trainer.env",
        },
        _no_device_resources("trainer.resources", "trainer.gpusPerNode"),
        _no_device_resources("inference.resources", "inference.gpus"),
    ],
    ("spec", "dataset"): [
        _optional_immutable("regenerate", "dataset.regenerate is immutable"),
        _optional_immutable(
            "claimName", "dataset.claimName is immutable: the running job's data positions refer to that volume"
        ),
    ],
    ("spec", "dataset", "path"): [
        *_named("dataset.path", "/data/train.jsonl"),
        *_immutable(
            "dataset.path is immutable: the running job's checkpoints record positions in that dataset; create a "
            "new job for other data"
        ),
    ],
    ("spec", "target", "model"): [
        *_named("target.model", "Qwen/Qwen3-8B or /models/qwen3-8b"),
        *_immutable("target.model is immutable"),
    ],
    ("spec", "trainer", "output"): [
        _optional_immutable(
            "claimName",
            "trainer.output.claimName is immutable: the running job's checkpoints and draft are on that volume",
        ),
        {
            "rule": (
                "!(self.draftDir == self.checkpointDir || self.draftDir.startsWith(self.checkpointDir + '/') || "
                "self.checkpointDir.startsWith(self.draftDir + '/'))"
            ),
            "message": (
                "trainer.output.draftDir must not be, contain or lie inside trainer.output.checkpointDir (old "
                "checkpoints are pruned from there)"
            ),
            "fieldPath": ".draftDir",
        },
    ],
    ("spec", "trainer", "output", "mountPath"): [
        {
            "rule": f"self.matches(r'{ABSOLUTE_DIR}')",
            "message": (
                "trainer.output.mountPath must be an absolute path of plain segments (no '/', '.', '..', empty "
                "segments or trailing '/'), e.g. /output"
            ),
        },
        {
            "rule": cel_mount_path_rule(),
            "message": (
                "trainer.output.mountPath must not be, contain or lie inside a path the operator mounts (/etc/dspark: "
                "the job config, /dev/shm, /data: the dataset, /models: the model, "
                "/var/run/secrets/kubernetes.io/serviceaccount: the trainer's token) nor replace a system directory "
                "(/bin, /lib, /proc, /sbin, /sys, /usr); use e.g. /output"
            ),
        },
        *_immutable(f"trainer.output.mountPath is immutable: {OUTPUT_IMMUTABLE['mountPath']}"),
    ],
    ("spec", "trainer", "output", "draftDir"): [
        *_relative_dir("trainer.output.draftDir", "draft"),
        *_immutable(f"trainer.output.draftDir is immutable: {OUTPUT_IMMUTABLE['draftDir']}"),
    ],
    ("spec", "trainer", "output", "checkpointDir"): [
        *_relative_dir("trainer.output.checkpointDir", "checkpoints"),
        *_immutable(f"trainer.output.checkpointDir is immutable: {OUTPUT_IMMUTABLE['checkpointDir']}"),
    ],
    ("spec", "trainer", "env"): [_reserved_env("trainer", RESERVED_ENV_NAMES | RESERVED_TRAINER_ENV_NAMES)],
    ("spec", "inference", "env"): [_reserved_env("inference", RESERVED_ENV_NAMES)],
    ("spec", "metrics", "port"): [
        {
            "rule": f"!(self in [{', '.join(str(p) for p in sorted(RESERVED_TRAINER_PORTS))}])",
            "message": (
                "metrics.port must not be a port the operator gives the job's processes: "
                + ", ".join(f"{p} ({what})" for p, what in sorted(RESERVED_TRAINER_PORTS.items()))
                + "; the default is 9400"
            ),
        }
    ],
    ("spec", "scheduling", "queueName"): [
        {
            "rule": f"self.matches(r'{LABEL_VALUE}')",
            "message": (
                "scheduling.queueName becomes the Workload's kueue.x-k8s.io/queue-name label, so it must be a label "
                "value: at most 63 characters of A-Z, a-z, 0-9, '-', '_' and '.', alphanumeric at both ends"
            ),
        }
    ],
    ("spec", "scheduling", "tolerations", "[]"): _toleration_rules(),
    ("spec", "dataset", "regenerate", "tolerations", "[]"): _toleration_rules(),
    ("spec", "target", "dtype"): _immutable("target.dtype is immutable"),
    ("spec", "target"): [_optional_immutable("revision", "target.revision is immutable")],
    **{("spec", "draft", f): _immutable(f"draft.{f} is immutable") for f in DRAFT_IMMUTABLE},
    ("spec", "draft"): [
        _optional_immutable("targetLayerIds", "draft.targetLayerIds is immutable"),
        _optional_immutable("maskTokenId", "draft.maskTokenId is immutable"),
        {
            "rule": "!has(self.targetLayerIds) || self.targetLayerIds.isSorted()",
            "message": "draft.targetLayerIds must be strictly increasing",
            "fieldPath": ".targetLayerIds",
        },
        {
            "rule": "self.markovRank > 0 || !self.enableConfidenceHead || !self.confidenceHeadWithMarkov",
            "message": "draft.confidenceHeadWithMarkov needs markovRank > 0; set it to false or give a markovRank",
            "fieldPath": ".confidenceHeadWithMarkov",
        },
        {
            "rule": "self.ceAlpha + self.l1Alpha + self.confidenceAlpha > 0.0",
            "message": "draft: at least one of ceAlpha, l1Alpha, confidenceAlpha must be > 0",
        },
        {
            "rule": "self.confidenceAlpha == 0.0 || self.enableConfidenceHead",
            "message": "draft.confidenceAlpha is > 0 but enableConfidenceHead is false; set confidenceAlpha: 0",
            "fieldPath": ".confidenceAlpha",
        },
    ],
    ("spec", "trainer", "optimizer"): [
        {
            "rule": "self.minLearningRate <= self.learningRate",
            "message": "trainer.optimizer.minLearningRate must not exceed trainer.optimizer.learningRate",
            "fieldPath": ".minLearningRate",
        }
    ],
    ("spec", "inference"): [
        {
            "rule": "!has(self.gpus) || self.gpus == 0 || self.gpus >= self.tensorParallelSize",
            "message": "inference.gpus must be 0 (CPU) or >= inference.tensorParallelSize",
            "fieldPath": ".gpus",
        },
        {
            "rule": "self.engine != 'reference' || self.tensorParallelSize == 1",
            "message": "inference.tensorParallelSize must be 1 with engine reference (it does not shard the target)",
            "fieldPath": ".tensorParallelSize",
        },
    ],
}

# Extra schema keywords, by property path (bounds CEL costs, list semantics).
EXTRA: dict[Path_, Schema] = {
    ("spec", "draft", "targetLayerIds"): {"maxItems": 64, "x-kubernetes-list-type": "set", "items": {"minimum": -1}},
    ("status", "conditions"): {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ("status", "gang", "members"): {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    # A name given twice is rejected by the API server ("Duplicate value"), naming the entry.
    ("spec", "inference", "env"): {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    ("spec", "trainer", "env"): {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the job."},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "The Ready condition: every child ready and the trainer running.",
    },
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "description": "Optimizer steps done."},
    {
        "name": "Total",
        "type": "integer",
        "jsonPath": ".status.progress.total",
        "description": "Optimizer steps planned.",
        "priority": 1,
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "description": "Latest training loss."},
    {"name": "Tau", "type": "number", "jsonPath": ".status.progress.tau", "description": "Accepted tokens per block."},
    {
        "name": "Restarts",
        "type": "integer",
        "jsonPath": ".status.restarts",
        "description": "Gang restarts of the trainer.",
        "priority": 1,
    },
    {
        "name": "Eval-Tau",
        "type": "number",
        "jsonPath": ".status.progress.evaluation.tau",
        "description": "Tokens per round in real speculative decoding after training (spec.evaluation).",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaError(ValueError):
    """The pydantic schema contains something a structural CRD schema cannot hold."""


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    """Inline every $ref (pydantic never emits recursive models here)."""
    if isinstance(node, list):
        return [_resolve(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = _resolve(copy.deepcopy(defs[name]), defs)
        rest = {k: _resolve(v, defs) for k, v in node.items() if k != "$ref"}
        merged = {**target, **rest}  # the use site's description/default win over the model's
        return merged
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = _resolve(node["allOf"][0], defs)
        rest = {k: _resolve(v, defs) for k, v in node.items() if k != "allOf"}
        return {**inner, **rest}
    return {k: _resolve(v, defs) for k, v in node.items()}


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _convert(node: Schema, path: Path_, *, defaults: bool) -> Schema:
    """Turn one resolved pydantic schema node into a structural schema node."""
    node = dict(node)
    optional = False
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node["anyOf"] if not _is_null(b)]
        if len(branches) != len(node["anyOf"]):
            optional = True
        if len(branches) != 1:
            raise SchemaError(f"{'.'.join(path)}: union types are not allowed in a structural schema")
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        node = {**branches[0], **outer}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        node.pop("default")
    if not defaults:
        node.pop("default", None)
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "patternProperties" in node:
        # dict[Annotated[str, pattern], V]: one value schema, keys checked by a CEL rule below.
        (pattern, value_schema), *more = node.pop("patternProperties").items()
        if more:
            raise SchemaError(f"{'.'.join(path)}: several patternProperties are not supported")
        node["additionalProperties"] = value_schema
        node["propertyNames"] = {"pattern": pattern}

    out: Schema = {}
    if "description" in node:
        out["description"] = " ".join(str(node["description"]).split())
    for key, value in node.items():
        if key in ("description", "title", "properties", "items", "additionalProperties", "propertyNames"):
            continue
        if key not in ALLOWED_KEYS:
            raise SchemaError(f"{'.'.join(path) or '<root>'}: keyword {key!r} is not allowed in a CRD schema")
        out[key] = value

    if node.get("type") == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties") or {}
        if props:
            out["properties"] = {}
            required = set(node.get("required") or [])
            for name, sub in props.items():
                child = _convert(sub, (*path, name), defaults=defaults)
                if (
                    defaults
                    and name not in required
                    and "default" not in child
                    and child.get("type") == "object"
                    and "properties" in child
                    and not child.pop("_optional", False)
                    and not child.get("required")
                ):
                    # The fully defaulted object (the API server checks defaults against CEL rules as they are).
                    child["default"] = {
                        n: sub_["default"] for n, sub_ in child["properties"].items() if "default" in sub_
                    }
                child.pop("_optional", None)
                out["properties"][name] = child
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _convert(extra, (*path, "*"), defaults=defaults)
            out["additionalProperties"].pop("_optional", None)
            names = node.get("propertyNames") or {}
            if "pattern" in names:
                out.setdefault("maxProperties", 64)
                out.setdefault("x-kubernetes-validations", []).append(
                    {
                        "rule": f"self.all(k, k.matches(r'{names['pattern']}'))",
                        "message": "keys must be resource names such as cpu, memory or example.com/device",
                    }
                )
        elif extra is True:
            # Free-form maps (e.g. chat template variables): the only place unknown fields are kept.
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif extra is not None and extra is not False:
            raise SchemaError(f"{'.'.join(path)}: additionalProperties={extra!r} is not supported")
    if node.get("type") == "array":
        if "items" not in node:
            raise SchemaError(f"{'.'.join(path)}: arrays need an items schema")
        out["items"] = _convert(node["items"], (*path, "[]"), defaults=defaults)
        out["items"].pop("_optional", None)
    if optional:
        out["_optional"] = True
    return _ordered(out)


_FIRST = ("type", "description")
_LAST = ("properties", "additionalProperties", "items", "required", "x-kubernetes-validations")


def _ordered(node: Schema) -> Schema:
    """Readable key order: type and description first, nested schemas and rules last."""
    head = {k: node[k] for k in _FIRST if k in node}
    tail = {k: node[k] for k in _LAST if k in node}
    middle = {k: v for k, v in node.items() if k not in head and k not in tail}
    return {**head, **middle, **tail}


def _deep_merge(base: Schema, extra: Schema) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _node_at(root: Schema, path: Path_) -> Schema:
    node = root
    for name in path:
        node = node["items"] if name == "[]" else node["properties"][name]
    return node


def model_schema(model: type[Any], *, defaults: bool) -> Schema:
    """Structural schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _convert(_resolve(raw, defs), (), defaults=defaults)
    schema.pop("_optional", None)
    return schema


def check_descriptions(schema: Schema, path: str = "") -> list[str]:
    """Property paths without a description (every field must have one for `kubectl explain`)."""
    missing: list[str] = []
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        if not sub.get("description") and here != "metadata":
            missing.append(here)
        missing += check_descriptions(sub, here)
        if isinstance(sub.get("items"), dict):
            missing += check_descriptions(sub["items"], f"{here}[]")
        if isinstance(sub.get("additionalProperties"), dict):
            missing += check_descriptions(sub["additionalProperties"], f"{here}.*")
    return missing


def openapi_schema() -> Schema:
    """The openAPIV3Schema of the CRD."""
    spec = model_schema(DSparkTrainingJobSpec, defaults=True)
    status = model_schema(DSparkTrainingJobStatus, defaults=False)
    spec["description"] = (
        "Desired state: the target model, DSpark draft options, data, inference servers, trainer gang, "
        "transport, run policy, scheduling and metrics."
    )
    status["description"] = "Observed state, written by the operator (progress: by the trainer's rank 0)."
    root: Schema = {
        "type": "object",
        "description": (
            "DSparkTrainingJob trains a DSpark speculative-decoding draft for a target model: SGLang servers "
            "capture the target's hidden states into Mooncake and a torchrun FSDP2 trainer gang consumes them."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation of an object.",
            },
            "kind": {"type": "string", "description": "Kind is the REST resource this object represents."},
            "metadata": {"type": "object"},  # the API server allows nothing else here
            "spec": spec,
            "status": status,
        },
    }
    for path, extra in EXTRA.items():
        node = _node_at(root, path)
        _deep_merge(node, extra)
        node.update(_ordered(node))
    for path, rules in RULES.items():
        _node_at(root, path).setdefault("x-kubernetes-validations", []).extend(copy.deepcopy(rules))
    missing = check_descriptions(root)
    if missing:
        raise SchemaError(f"fields without a description: {', '.join(missing)}")
    return root


def build_crd() -> Schema:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "dspark", "app.kubernetes.io/part-of": "dspark"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render() -> str:
    """The CRD as YAML text (deterministic)."""
    return HEADER + dump_yaml(build_crd())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return generated_file_main(
        argv, module="dspark_operator.crdgen", description=__doc__.split("\n")[0], what="the CRD file",
        output_label="CRD file", default_output=DEFAULT_OUTPUT, render=render,
    )


if __name__ == "__main__":
    sys.exit(main())
