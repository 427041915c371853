"""How the shipped model is trained (`sdlab world train-model`): tokenizer, VAE, decoder
fine-tune, CLIP pair, UNet, assembly into a diffusers folder, its evaluation and card, and the
classifier for classifier guidance. Each stage is a timed loop whose checkpoints are the
training loop's (sdlab.training.checkpoints: safetensors + JSON, written atomically)."""
