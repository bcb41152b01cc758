"""Hugging Face PEFT LoRA adapters in and out (`peft`), on ViT and DINOv2 bases; HF checkpoints
are read by `eyegazer_keras.models.hf_vit` (ViT) and `eyegazer_keras.models.dinov2_backbone`.

* `peft.import_peft`: a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``,
  local or ``hf://org/name``) on a ViT or DINOv2 base becomes an ordinary `eyegazer train` run
  folder;
* `peft.export_peft`: a run's LoRA + head become a PEFT adapter that
  ``PeftModel.from_pretrained`` loads onto the matching HF base.

`peft_adapter` reads and checks an adapter, `peft_layout` holds the key names and LoRA weight
layouts between the two, `peft_files` the files besides the weights. None needs torch,
transformers or peft: the files are read and written with `safetensors`.
"""
