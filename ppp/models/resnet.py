"""ResNet-18 for 32x32 inputs (3x3 stem, no max pool) with GroupNorm instead of BatchNorm.

GroupNorm keeps every statistic per image, so a batch of one image gives well-defined gradients and
the attacked model behaves the same in training and evaluation. Two groups per layer, as in the
authors' later ResNet18GN (see docs/method.md)."""

from collections import OrderedDict

from torch import nn

from ppp.models import register


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.norm2 = _norm(c_out, groups)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out, groups))

    def forward(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register("resnet18")
def resnet18_stages(in_shape, num_classes, width: int = 64, norm_groups: int = 2):
    channels = in_shape[0]
    stages = OrderedDict(stem=nn.Sequential(
        nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False), _norm(width, norm_groups), nn.ReLU()))
    c_in = width
    for i, c_out in enumerate([width, 2 * width, 4 * width, 8 * width]):
        stride = 1 if i == 0 else 2
        stages[f"layer{i + 1}"] = nn.Sequential(BasicBlock(c_in, c_out, stride, norm_groups),
                                              BasicBlock(c_out, c_out, 1, norm_groups))
        c_in = c_out
    stages["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    stages["head"] = nn.Linear(8 * width, num_classes)
    return stages
