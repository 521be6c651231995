"""A fully connected network with ReLU activations."""

from collections import OrderedDict

from torch import nn

from ppp.models import register


@register("mlp")
def mlp_stages(in_shape, num_classes, width: int = 1024):
    channels, height, width_px = in_shape
    return OrderedDict(
        fc1=nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width_px, width), nn.ReLU()),
        fc2=nn.Sequential(nn.Linear(width, width), nn.ReLU()),
        head=nn.Linear(width, num_classes),
    )
