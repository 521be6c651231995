"""LeNet as used in the gradient leakage literature (Zhu et al.'s DLG, Inverting Gradients' LeNetZhu):
three strided 5x5 convs with sigmoid, then a linear head; weights and biases uniform in [-0.5, 0.5]."""

from collections import OrderedDict

import torch
from torch import nn

from ppp.models import register


@register("lenet")
def lenet_stages(in_shape, num_classes, init_range: float = 0.5):
    channels, height, width = in_shape
    features = 12 * ((height + 3) // 4) * ((width + 3) // 4)
    stages = OrderedDict(
        conv1=nn.Sequential(nn.Conv2d(channels, 12, kernel_size=5, padding=2, stride=2), nn.Sigmoid()),
        conv2=nn.Sequential(nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2), nn.Sigmoid()),
        conv3=nn.Sequential(nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1), nn.Sigmoid(),
                            nn.Flatten()),
        head=nn.Linear(features, num_classes),
    )
    if init_range:
        with torch.no_grad():
            for stage in stages.values():
                for p in stage.parameters():
                    p.uniform_(-init_range, init_range)
    return stages
