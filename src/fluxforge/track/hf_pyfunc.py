"""MLflow "model from code" wrapper for an HF causal LM directory.

Logged as code (no pickle): MLflow users get ``mlflow.pyfunc.load_model(uri).predict``
(prompts in, greedy continuations out); transformers users download the ``hf``
artifact directory and call ``AutoModelForCausalLM.from_pretrained`` on it.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class HFCausalLM(PythonModel):
    def load_context(self, context):  # noqa: ANN001 - MLflow's signature
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        path = context.artifacts["hf"]
        self.model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
        self.tok = PreTrainedTokenizerFast.from_pretrained(path)

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:  # noqa: ANN001
        import torch

        prompts = list(model_input)
        max_new = int((params or {}).get("max_new_tokens", 16))
        out = []
        for p in prompts:
            ids = self.tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                gen = self.model.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=self.tok.pad_token_id)
            out.append(self.tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        return out


mlflow.models.set_model(HFCausalLM())
