"""bf16 autocast on the CPU (issue #19). Our RMSNorm gives exactly what torch.nn.RMSNorm (Apple's layer) and timm's
RmsNorm give, without handing torch an input and a weight of different dtypes (its "Mismatch dtype" fallback); the
encoder then equals timm's AIMv2 under autocast too. open_clip's attention gets its batch-first input laid out
sequence-first in memory under autocast (else its CPU projection runs one GEMM per position)."""

import open_clip
import timm
import torch
import torch.nn.functional as F
from timm.layers import RmsNorm as TimmRmsNorm
from torch.overrides import TorchFunctionMode

from aimv2_eval.backbones.base import Preprocess
from aimv2_eval.backbones.open_clip import OpenCLIPViT
from aimv2_eval.core.checkpoints import infer_config, to_apple
from aimv2_eval.core.encoder import AIMv2Encoder
from aimv2_eval.core.layers import RMSNorm


class RecordRmsNormDtypes(TorchFunctionMode):
    """(input dtype, weight dtype or None) of every F.rms_norm call: a structural check, unlike torch's warning,
    which is printed once per process and so says nothing after another test triggered it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.dtype, torch.dtype | None]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.rms_norm:
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            self.calls.append((args[0].dtype, None if weight is None else weight.dtype))
        return func(*args, **kwargs)

    def mismatched(self) -> list[tuple[torch.dtype, torch.dtype | None]]:
        return [c for c in self.calls if c[1] is not None and c[0] != c[1]]


def _norms(dim: int, eps: float) -> tuple[RMSNorm, torch.nn.RMSNorm, TimmRmsNorm]:
    ours, ref, ref_timm = RMSNorm(dim, eps), torch.nn.RMSNorm(dim, eps), TimmRmsNorm(dim, eps)
    weight = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for norm in (ours, ref, ref_timm):
            norm.weight.copy_(weight)
    return ours, ref, ref_timm


def test_bf16_input_under_autocast_equals_torch_and_timm_without_mismatch():
    ours, ref, ref_timm = _norms(96, 1e-5)
    g = torch.Generator().manual_seed(1)
    # magnitudes from tiny (eps matters) to large, as activations arriving in bf16 from an autocast matmul
    x = (torch.randn(3, 7, 96, generator=g) * torch.logspace(-4, 2, 7)[None, :, None]).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with RecordRmsNormDtypes() as rec:
            out = ours(x)
        expected, expected_timm = ref(x), ref_timm(x)
    assert rec.calls and not rec.mismatched(), rec.calls
    assert out.dtype == expected.dtype == expected_timm.dtype == torch.bfloat16  # torch's fallback rounds to the input's
    assert torch.equal(out, expected)
    assert torch.equal(out, expected_timm)


def test_same_dtype_input_takes_the_weighted_call_bit_for_bit():
    ours, ref, _ = _norms(64, 1e-6)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(2))
    with RecordRmsNormDtypes() as rec:
        out = ours(x)
    assert rec.calls == [(torch.float32, torch.float32)]
    assert torch.equal(out, ref(x))


def test_encoder_under_bf16_autocast_equals_timm_aimv2():
    ref = timm.create_model("aimv2_large_patch14_224", pretrained=False, img_size=56, embed_dim=64, depth=2,
                            num_heads=2).eval()
    with torch.no_grad():  # non-trivial norm weights: a bf16-rounded weight would show
        for p in ref.parameters():
            p.normal_(0.0, 0.05 if p.ndim > 1 else 1.0, generator=torch.Generator().manual_seed(p.numel()))
    sd, _ = to_apple(ref.state_dict())
    ours = AIMv2Encoder(infer_config(sd, {"num_attention_heads": 2})).eval()
    ours.load_state_dict(sd)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with RecordRmsNormDtypes() as rec:
            out = ours(x)
        expected = ref.forward_features(x)
    assert len(rec.calls) == 2 * 2 + 2 and not rec.mismatched()  # 2 per block, the patch norm and the final norm
    assert out.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_open_clip_attention_gets_a_sequence_first_layout_under_autocast_only():
    torch.manual_seed(0)
    visual = open_clip.transformer.VisionTransformer(image_size=32, patch_size=16, width=64, layers=2, heads=2,
                                                     mlp_ratio=2.0, output_dim=32).eval()
    pristine = open_clip.transformer.VisionTransformer(image_size=32, patch_size=16, width=64, layers=2, heads=2,
                                                       mlp_ratio=2.0, output_dim=32).eval()
    pristine.load_state_dict(visual.state_dict())
    pristine.proj = None  # as the adapter drops it: both give the normed class token
    backbone = OpenCLIPViT(visual, "tiny-clip", "open_clip", Preprocess(32, 32)).requires_grad_(False)
    seen: list[bool] = []  # runs after our hook: is what the attention transposes contiguous once transposed?
    for block in visual.transformer.resblocks:
        block.attn.register_forward_pre_hook(lambda m, a: seen.append(a[0].transpose(0, 1).is_contiguous()))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fp32 = backbone.tokens(x).prefix[:, 0]
        assert seen == [False, False]  # the fused fp32 path is left as open_clip runs it
        assert torch.equal(fp32, pristine(x))
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, expected = backbone.tokens(x).prefix[:, 0], pristine(x)
        assert seen == [True, True]
    torch.testing.assert_close(bf16, expected, rtol=0.02, atol=0.02)  # one GEMM instead of one per position
