"""Model factories for `conv3d-gen build --model` in the tests."""
import torch


def small_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv3d(8, 8, (1, 3, 5), stride=2, padding=1, padding_mode="reflect"), torch.nn.ReLU(),
        torch.nn.Conv3d(8, 4, 1))


NOT_A_FACTORY = 42
