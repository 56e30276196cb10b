"""``calae explore``: the latent-space explorer in the browser (needs the ``web`` extra)."""
