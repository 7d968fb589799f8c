"""Base class for every configuration model shared by the operator and the trainer.

Fields are snake_case in Python and camelCase on the wire (the CRD, the rendered
ConfigMap, YAML config files); both spellings are accepted on input. Unknown keys are
errors, so a typo in a config file fails at start with the field named.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ConfigModel(BaseModel):
    """Strict, camelCase-on-the-wire pydantic model."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, object]:
        """The camelCase JSON-compatible dict, as written to the CRD or a ConfigMap."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
