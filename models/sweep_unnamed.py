# sweep_unnamed.py: timm families no issue names, built small, with their PyTorch float64 step, to check sbpc on models it was not written for.
"""Build each family below small (timm's random init, 5 classes), export it for training and
write PyTorch's float64 train-mode step beside it, as models/families.py does:

    python3 models/sweep_unnamed.py [--out DIR] [NAME ...]     # default DIR: /tmp/sbpc-sweep

Then check sbpc's plain step on each folder with models/compare_family.py (the commands of
models/check_families.sh), and its SBP step with models/sbp_hook_check.py after adding the
family to families.FULL. A family whose export fails its own onnxruntime check is reported
and skipped. BENCHMARKS.md ("Families no issue names") records a run.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import families as F  # noqa: E402
import torch  # noqa: E402

SPECS = {
  "xcit_nano_12_p16_224": (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
  "edgenext_xx_small": (dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40)), (3, 64, 64)),
  "twins_svt_small": (dict(img_size=64, embed_dims=(16, 24, 32, 48), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                           wss=(2, 2, 2, 2), sr_ratios=(4, 2, 1, 1)), (3, 64, 64)),
  "mobilevit_xxs": (dict(), (3, 64, 64)),
  "pit_ti_224": (dict(img_size=64), (3, 64, 64)),
  "visformer_tiny": (dict(img_size=64), (3, 64, 64)),
  "ghostnet_050": (dict(), (3, 64, 64)),
  "lcnet_050": (dict(), (3, 64, 64)),
  "repvgg_a0": (dict(), (3, 64, 64)),
  "resnest14d": (dict(), (3, 64, 64)),
  "rexnet_100": (dict(), (3, 64, 64)),
  "mixnet_s": (dict(), (3, 64, 64)),
  "sequencer2d_s": (dict(), (3, 32, 32)),
  "coat_lite_tiny": (dict(img_size=64, embed_dims=(32, 48, 64, 80), serial_depths=(1, 1, 1, 1), num_heads=8), (3, 64, 64)),
  "tiny_vit_5m_224": (dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                           window_sizes=(2, 2, 2, 2)), (3, 64, 64)),
  "efficientformer_l1": (dict(depths=(1, 1, 1, 1), embed_dims=(16, 24, 32, 48)), (3, 224, 224)),
  "fastvit_t8": (dict(layers=(1, 1, 1, 1)), (3, 64, 64)),
  "densenet121": (dict(growth_rate=8, block_config=(1, 1, 1, 1)), (3, 64, 64)),
  "convmixer_768_32": (dict(dim=32, depth=2, kernel_size=3, patch_size=4), (3, 32, 32)),
  "gcvit_xxtiny": (dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)), (3, 224, 224)),
  "davit_tiny": (dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)), (3, 64, 64)),
  "focalnet_tiny_srf": (dict(embed_dim=16, depths=(1, 1, 1, 1)), (3, 64, 64)),
  "nest_tiny": (dict(img_size=64, patch_size=4, embed_dims=(16, 32, 64), num_heads=(1, 2, 4), depths=(1, 1, 1)), (3, 64, 64)),
  "volo_d1_224": (dict(layers=(1, 1, 1, 1), img_size=64), (3, 64, 64)),
  "efficientvit_b0": (dict(), (3, 64, 64)),
  "mobilevitv2_050": (dict(), (3, 64, 64)),
  "hgnetv2_b0": (dict(), (3, 64, 64)),
  "repghostnet_050": (dict(), (3, 64, 64)),
  "inception_next_tiny": (dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)), (3, 64, 64)),
  "starnet_s1": (dict(), (3, 64, 64)),
  "nf_resnet26": (dict(), (3, 64, 64)),
  "regnetz_b16": (dict(), (3, 64, 64)),
  "dla34": (dict(), (3, 64, 64)),
  "res2net50_14w_8s": (dict(), (3, 64, 64)),
  "vovnet39a": (dict(), (3, 64, 64)),
  "mambaout_femto": (dict(), (3, 64, 64)),
  "rdnet_tiny": (dict(), (3, 64, 64)),
  "ghostnetv2_100": (dict(), (3, 64, 64)),
  "gernet_s": (dict(), (3, 64, 64)),
  "tresnet_m": (dict(), (3, 64, 64)),
  "hiera_tiny_224": (dict(), (3, 224, 224)),
  "gmlp_s16_224": (dict(img_size=32, patch_size=4, embed_dim=32, num_blocks=2), (3, 32, 32)),
  "vit_small_patch14_reg4_dinov2": (dict(img_size=28, embed_dim=32, depth=3, num_heads=2), (3, 28, 28)),
  "swinv2_cr_tiny_ns_224": (dict(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=2), (3, 64, 64)),
  "resnetv2_50x1_bit": (dict(), (3, 64, 64)),
  "tf_efficientnet_b0": (dict(), (3, 64, 64)),
  "skresnet18": (dict(), (3, 64, 64)),
  "hrnet_w18_small": (dict(), (3, 64, 64)),
  "inception_v3": (dict(), (3, 96, 96)),
  "xception41": (dict(), (3, 64, 64)),
  "mobileone_s0": (dict(), (3, 64, 64)),
  "efficientnetv2_rw_t": (dict(), (3, 64, 64)),
  "regnetx_002": (dict(), (3, 64, 64)),
  "swinv2_tiny_window8_256": (dict(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4), (3, 64, 64)),
  "maxvit_rmlp_pico_rw_256": (dict(img_size=64), (3, 64, 64)),
  "nest_tiny": (dict(img_size=64, embed_dims=(16, 32, 64), depths=(1, 1, 1), num_heads=(1, 2, 4)), (3, 64, 64)),
  # second sweep (2026-12-07): families the first sweep left out
  "mobilenetv4_hybrid_medium": (dict(), (3, 64, 64)),
  "mobilenetv4_conv_small": (dict(), (3, 64, 64)),
  "coatnet_nano_rw_224": (dict(img_size=64), (3, 64, 64)),
  "crossvit_tiny_240": (dict(), (3, 240, 240)),
  "tnt_s_patch16_224": (dict(img_size=64, depth=2), (3, 64, 64)),
  "convit_tiny": (dict(img_size=32, patch_size=4, depth=3, local_up_to_layer=2), (3, 32, 32)),
  "mvitv2_tiny": (dict(img_size=64), (3, 64, 64)),
  "efficientformerv2_s0": (dict(depths=(1, 1, 1, 1)), (3, 224, 224)),
  "halonet26t": (dict(img_size=128), (3, 128, 128)),
  "botnet26t_256": (dict(img_size=128), (3, 128, 128)),
  "lambda_resnet26t": (dict(img_size=128), (3, 128, 128)),
  "dm_nfnet_f0": (dict(), (3, 64, 64)),
  "eca_nfnet_l0": (dict(), (3, 64, 64)),
  "cspresnet50": (dict(), (3, 64, 64)),
  "cspdarknet53": (dict(), (3, 64, 64)),
  "cs3darknet_s": (dict(), (3, 64, 64)),
  "selecsls42b": (dict(), (3, 64, 64)),
  "dpn68": (dict(), (3, 64, 64)),
  "vgg11_bn": (dict(), (3, 64, 64)),
  "efficientvit_m0": (dict(img_size=64), (3, 64, 64)),
  "repvit_m1": (dict(), (3, 64, 64)),
  "vit_base_patch16_siglip_224": (dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
  "vit_base_patch16_rope_reg1_gap_256": (dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
  "vit_little_patch16_reg1_gap_256": (dict(img_size=32, patch_size=4), (3, 32, 32)),
  "samvit_base_patch16": (dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2), (3, 64, 64)),
  "poolformerv2_s12": (dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), (3, 32, 32)),
  "seresnext26d_32x4d": (dict(), (3, 64, 64)),
  "resnet18d": (dict(), (3, 64, 64)),
  "resnetrs50": (dict(), (3, 64, 64)),
  "gcresnet33ts": (dict(), (3, 64, 64)),
  "inception_v4": (dict(), (3, 96, 96)),
  "fbnetv3_b": (dict(), (3, 64, 64)),
  "mnasnet_100": (dict(), (3, 64, 64)),
  "hardcorenas_a": (dict(), (3, 64, 64)),
  "ese_vovnet19b_dw": (dict(), (3, 64, 64)),
  "tinynet_a": (dict(), (3, 64, 64)),
  "efficientnet_lite0": (dict(), (3, 64, 64)),
  "ghostnetv3_050": (dict(), (3, 64, 64)),
  "fasternet_t0": (dict(), (3, 64, 64)),
  "fastvit_mci0": (dict(), (3, 64, 64)),
  "shvit_s1": (dict(), (3, 224, 224)),
  "nextvit_small": (dict(), (3, 64, 64)),
  "vitamin_small_224": (dict(img_size=64), (3, 64, 64)),
  "hgnet_tiny": (dict(), (3, 64, 64)),

  # sixth batch (2026-12-07, evening)
  "mvitv2_small_cls": (dict(img_size=64), (3, 64, 64)),
  "eca_halonext26ts": (dict(img_size=256), (3, 256, 256)),
  "sebotnet33ts_256": (dict(img_size=128), (3, 128, 128)),
  "regnety_040": (dict(), (3, 64, 64)),
  "mobilenetv2_100": (dict(), (3, 64, 64)),
  "resnetv2_50": (dict(), (3, 64, 64)),
  "nf_regnet_b0": (dict(), (3, 64, 64)),
  "levit_conv_128s": (dict(img_size=128), (3, 128, 128)),
  "vit_base_patch16_clip_224": (dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
  "flexivit_small": (dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
  "beitv2_base_patch16_224": (dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
  "spnasnet_100": (dict(), (3, 64, 64)),
  "tf_mixnet_s": (dict(), (3, 64, 64)),
  "bat_resnext26ts": (dict(), (3, 64, 64)),
  "lambda_resnet26rpt_256": (dict(img_size=128), (3, 128, 128)),
  "efficientvit_l1": (dict(), (3, 64, 64)),
  "mobilenetv4_conv_aa_large": (dict(), (3, 64, 64)),
  "vit_medium_patch16_gap_256": (dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
  "pit_ti_distilled_224": (dict(img_size=64), (3, 64, 64)),
}


def family(name):
    kw, chw = SPECS[name]

    make = F.timm(name, **kw)  # families.py's builder: overrides win over the registered arguments

    def build():
        torch.manual_seed(0)
        try:
            return make()
        except TypeError as e:
            if "drop_path_rate" not in str(e):
                raise
        # A model that takes no drop-path rate (GhostNet, DenseNet, ConvMixer): its dropout
        # alone set to 0.
        import timm
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=5, drop_rate=0.0, **kw)
    return F.Family(build, chw, 2, False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/sbpc-sweep")
    ap.add_argument("names", nargs="*", help=f"default: all of {sorted(SPECS)}")
    args = ap.parse_args()
    for name in args.names or list(SPECS):
        try:
            F.write_reference(name, family(name), os.path.join(args.out, name), False, control_float32=True)
            print("ok", name, flush=True)
        except BaseException as e:  # an export that fails its own check is a finding, not a crash
            print("EXPORT-FAIL", name, type(e).__name__, (str(e).splitlines() or [""])[0][:200], flush=True)


if __name__ == "__main__":
    main()
