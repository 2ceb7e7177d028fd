"""fastlstm's exceptions."""


class ModelLoadError(ValueError):
    """A model file is broken, unsafe or uses something fastlstm does not support. The message names the file,
    the layer or node, and what is wrong."""
