"""overnight: turn a GPU box into a training appliance."""
__version__ = "0.1.0"
