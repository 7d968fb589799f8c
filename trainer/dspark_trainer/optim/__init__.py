"""Optimizers beyond ``torch.optim``: AdamW with split fp32 master weights (``split_master``)."""
