"""MLflow "model from code" wrapper for a CLIP directory written by ``clip_pretrain`` (weights + caption tokenizer).

``predict`` takes a DataFrame with a ``text`` column (captions) or an ``image`` column (PNG bytes) and returns
the L2-normalised projected embeddings, one list per row; transformers users load ``artifacts/hf`` with
``CLIPModel.from_pretrained`` and ``PreTrainedTokenizerFast.from_pretrained``.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class HFClip(PythonModel):
    def load_context(self, context):  # noqa: ANN001 - MLflow's signature
        from transformers import CLIPModel, PreTrainedTokenizerFast

        path = context.artifacts["hf"]
        self.model = CLIPModel.from_pretrained(path, use_safetensors=True).eval()
        self.tok = PreTrainedTokenizerFast.from_pretrained(path)

    def predict(self, context, model_input, params: dict | None = None) -> list[list[float]]:  # noqa: ANN001
        import io

        import numpy as np
        import torch
        from PIL import Image

        with torch.no_grad():
            if "text" in model_input:
                enc = self.tok(list(model_input["text"]), padding="max_length", max_length=self.tok.model_max_length,
                               return_tensors="pt")
                out = self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            else:
                size = self.model.config.vision_config.image_size
                pics = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((size, size)), dtype=np.float32)
                        for b in model_input["image"]]
                x = torch.from_numpy(np.stack(pics).transpose(0, 3, 1, 2) / 127.5 - 1.0)
                out = self.model.get_image_features(pixel_values=x)
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(emb, dim=-1).tolist()


mlflow.models.set_model(HFClip())
