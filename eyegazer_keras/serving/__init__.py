"""Serving: a trained model for people and programs.

* `export`: the SavedModel (encoded image bytes in), `signatures`: its serving functions,
  `model_card`: the card beside it;
* `predict`: loading an export and grading photos (`eyegazer predict`);
* `serve`: KServe V1 + V2 (`eyegazer serve`); `app`: the Gradio app (`eyegazer app`).

Floor 2: above data and models (and using evaluation's metrics and maps), below runs.
"""
