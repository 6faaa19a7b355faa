"""The training side: frozen VGG, perceptual loss, data, LightningModule and the run assembly.

Imports Lightning and torchvision's VGG; the inference side (``fastnst.apply``) never imports this.
"""
