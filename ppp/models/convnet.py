"""Inverting Gradients' ConvNet: eight 3x3 conv-BatchNorm-ReLU layers (widths w, 2w, 2w, 4w, 4w, 4w,
4w, 4w) with two 3x3 max pools, then a linear head. The authors' tool builds it with w = 64."""

from collections import OrderedDict

from torch import nn

from ppp.models import register


def _conv(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


@register("convnet")
def convnet_stages(in_shape, num_classes, width: int = 64):
    channels, height, width_px = in_shape
    w = width
    pooled = (height // 3) // 3, (width_px // 3) // 3
    return OrderedDict(
        block1=nn.Sequential(*_conv(channels, w), *_conv(w, 2 * w), *_conv(2 * w, 2 * w)),
        block2=nn.Sequential(*_conv(2 * w, 4 * w), *_conv(4 * w, 4 * w), *_conv(4 * w, 4 * w), nn.MaxPool2d(3)),
        block3=nn.Sequential(*_conv(4 * w, 4 * w), *_conv(4 * w, 4 * w), nn.MaxPool2d(3), nn.Flatten()),
        head=nn.Linear(4 * w * pooled[0] * pooled[1], num_classes),
    )
