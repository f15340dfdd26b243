#!/usr/bin/env bash
# The commands that made the bundled models in raeae/models/ (run from the repository root, with
# ../shared/data present). Each model records its training command, the commit it ran at, the data,
# the training minutes and the PSNRs measured by bench/release.py inside the checkpoint itself
# (state["provenance"]); the README's quality table quotes them. Each step starts from the model the
# step before it packaged (--init builtin:...), so the steps run in this order.
#
# RELEASE_DRY_RUN=1 prints the commands instead of running them (tests/test_bench.py checks that every
# training command still parses with today's flags).
set -euo pipefail

# step DIR NAME COMMAND: train with COMMAND (its --output must be DIR/NAME) and record the command and
# the commit in DIR. Alone, a step that is not packaged (a later release starts from it; the release's
# provenance describes it from its checkpoint, raeae.release).
step() {
    local dir=$1 name=$2 cmd=$3
    if [[ -n ${RELEASE_DRY_RUN:-} ]]; then
        printf 'train: %s\n' "$cmd"
        return
    fi
    mkdir -p "$dir"
    git rev-parse HEAD > "$dir/$name.commit"
    printf '%s\n' "$cmd" > "$dir/$name.cmd"
    bash "$dir/$name.cmd"
}

# release DIR NAME TEST COMMAND: a step, then DIR/NAME packaged as raeae/models/NAME.pt with the PSNRs
# measured on TEST.
release() {
    local dir=$1 name=$2 test=$3 cmd=$4
    step "$dir" "$name" "$cmd"
    [[ -n ${RELEASE_DRY_RUN:-} ]] && return
    .venv/bin/python bench/release.py --trained "$dir/$name" --name "$name" --test "$test" \
        --command-file "$dir/$name.cmd" --commit-file "$dir/$name.commit"
}

# builtin:gray, first release - blind (σ 0-55), Train400, the photo recipe's network, 45 minutes on 2 CPUs
# (263 epochs, fp32). BSD68 σ=25: 27.98 dB. Ran at commit e257393 with the flags spelled out; they equal
# today's photo preset plus the blind range.
release runs/release gray ../shared/data/bsd68 \
    ".venv/bin/raeae train --data ../shared/data/train400 --output runs/release/gray --noise gaussian --sigma 0 --sigma-max 55 --patch-size 13 --hidden 1024 --latent 512 --decoder-hidden 1024 --residual --augment --lr 3e-4 --cosine --patience 0 --epochs 100000 --max-minutes 45 --workers 1 --cpus-per-worker 2 --val-fraction 0.02 --storage-path runs/release/ray --run-name release-gray-1"

# builtin:color, first release - blind (σ 0-55), CBSD432, an opponent-colour model (one shared 13x13 plane
# network over luma and two chroma planes, see raeae.model.ColorMode) started from builtin:gray and
# trained on colour photographs for 40 minutes on 2 CPUs (15 epochs; the CPUs were shared with test
# runs). Its code was in the working tree at start and committed as cf67a5b, the commit it records.
# (An earlier joint 13x13x3 model trained from scratch for 25 contended minutes restored CBSD68 at
# 25.29 dB, below builtin:gray channel by channel, 27.95, and was not shipped.)
release runs/release color ../shared/data/cbsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release/color --channels 3 --color opponent --init builtin:gray --sigma 0 --sigma-max 55 --lr 1e-4 --max-minutes 40 --val-fraction 0.02 --storage-path runs/release/ray --run-name release-color-opponent-1"

# builtin:gray, second release - the first release fine-tuned for 70 minutes on 2 CPUs on the luminance
# of CBSD432 (the 432 BSDS photographs outside the test set, at 481x321: ~5x Train400's pixels, which
# are crops of the same photographs), σ 0-55, lr 2e-4 with cosine decay, bf16 (the default precision
# since the first release). Ran at commit c1726bd; BSD68 σ=25: 28.28 dB.
release runs/release3 gray ../shared/data/bsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --channels 1 --output runs/release3/gray --init builtin:gray --sigma 0 --sigma-max 55 --lr 2e-4 --max-minutes 70 --val-fraction 0.02 --storage-path runs/release3/ray --run-name release-gray-3"

# builtin:color, second release (shipped) - the same opponent-colour model, started from builtin:gray's
# second release (the step above) and trained on CBSD432 in colour for 40 minutes on 2 CPUs, bf16.
# Ran at commit ef46d5a; CBSD68 σ=25: 30.16 dB.
release runs/release4 color ../shared/data/cbsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release4/color --channels 3 --color opponent --init builtin:gray --sigma 0 --sigma-max 55 --lr 1e-4 --max-minutes 40 --val-fraction 0.02 --storage-path runs/release4/ray --run-name release-color-opponent-2"

# builtin:gray, third release - the second release told the noise level (--noise-input: one more input,
# its weights started at zero, so training began from exactly the second release) and fine-tuned for 50
# minutes on 2 CPUs on CBSD432's luminance, σ 0-55, lr 2e-4 with cosine decay, bf16. Ran at commit
# b1c5915; restore tells it each image's σ as estimated by raeae.corrupt.noise_level (6c948eb).
release runs/release6 gray ../shared/data/bsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --channels 1 --output runs/release6/gray --init builtin:gray --noise-input --sigma 0 --sigma-max 55 --lr 2e-4 --max-minutes 50 --val-fraction 0.02 --storage-path runs/release6/ray --run-name release-gray-6"

# builtin:color, third release - the second told the noise level (--noise-input, zero-started like the
# gray third release; each opponent plane is told its own share of the RGB σ) and trained 30 more
# minutes on CBSD432 in colour on 2 CPUs (36 epochs, lr 1e-4 with cosine decay, bf16). Ran at commit
# aa848e8; CBSD68 σ=25: 30.47 dB.
release runs/release7 color ../shared/data/cbsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release7/color --channels 3 --color opponent --init builtin:color --noise-input --sigma 0 --sigma-max 55 --lr 1e-4 --max-minutes 30 --val-fraction 0.02 --storage-path runs/release7/ray --run-name release-color-opponent-3"

# builtin:color, fourth release (shipped) - the third, trained 60 more minutes on CBSD432 in colour on 2
# CPUs (62 epochs, lr 1e-4 with cosine decay, bf16; the CPUs shared with test runs for a few minutes).
# Ran at commit eb6875c; CBSD68 σ=25: 30.50 dB (third: 30.47).
release runs/release8 color ../shared/data/cbsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release8/color --channels 3 --color opponent --init builtin:color --noise-input --sigma 0 --sigma-max 55 --lr 1e-4 --max-minutes 60 --val-fraction 0.02 --storage-path runs/release8/ray --run-name release-color-opponent-4"

# builtin:jpeg, first release - JPEG artefacts, with or without noise before compression. builtin:color's
# fourth release told the JPEG damage (--jpeg-input, turned on by --noise jpeg: the quantisation table's
# strength and each tile's phase on the block grid, 9 inputs whose weights start at zero, so training began
# from exactly builtin:color) and fine-tuned for 80 minutes on 2 CPUs on CBSD432: each image, each epoch,
# flipped or rotated, made gray for a quarter of them, given Gaussian noise of σ 5-30 for half of them,
# then saved as a JPEG at a quality drawn from 10-95 (raeae.damaged_patches); lr 2e-4 with cosine decay,
# bf16. One colour model restores gray JPEGs too (through its luma plane). Ran at commit c793e76 (101 epochs;
# at epoch 35 a test run killed its worker and it resumed under the same --run-name at 202fd1f, the same
# loop cut into modules); CBSD68 told each file's quality: q10/20/40/75 +0.95/+0.86/+0.82/+0.70 dB. (The run
# wrote to runs/release9/color-jpeg, a folder renamed before packaging; the command here names the folder
# release() packages.)
release runs/release9 jpeg ../shared/data/cbsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release9/jpeg --channels 3 --color opponent --init builtin:color --noise jpeg --sigma 5 --sigma-max 30 --quality 10 --quality-max 95 --lr 2e-4 --max-minutes 80 --val-fraction 0.02 --storage-path runs/release9/ray --run-name release-color-jpeg-1"

# builtin:jpeg-low, first release - JPEG qualities 10-50, no noise before compression: where the JPEG model
# gains least over its input (q20: +0.86 dB), a model for low qualities alone. builtin:auto sends a JPEG
# to it when its quality lies in 10-50 (the narrowest range that holds it; raeae.inference.pick_model).
# Three fine-tunes on 2 CPUs, each from the one before, lr 2e-4 with cosine decay, bf16:
# builtin:jpeg 15 more minutes on its own recipe (ran with --init raeae/models/jpeg.pt, the same file;
# at fd1befa), then 15 with noise on a fifth of the images (at 219f00d), then 40 minutes on qualities
# 10-50 without noise (86 epochs, at b4eb130; the run wrote to runs/release11/lowq, a folder renamed
# before packaging). CBSD68 told each file's quality: q10/20/40 +1.07/+1.03/+1.02 dB.
step runs/release10 ab-plain \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release10/ab-plain --channels 3 --color opponent --init builtin:jpeg --noise jpeg --sigma 5 --sigma-max 30 --quality 10 --quality-max 95 --lr 2e-4 --max-minutes 15 --val-fraction 0.02 --storage-path runs/release10/ray --run-name ab-plain"
step runs/release10 ab-share \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release10/ab-share --channels 3 --color opponent --init runs/release10/ab-plain --noise jpeg --sigma 5 --sigma-max 30 --noise-share 0.2 --quality 10 --quality-max 95 --lr 2e-4 --max-minutes 15 --val-fraction 0.02 --storage-path runs/release10/ray --run-name ab-share"
release runs/release11 jpeg-low ../shared/data/cbsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release11/jpeg-low --channels 3 --color opponent --init runs/release10/ab-share --noise jpeg --sigma 5 --sigma-max 30 --noise-share 0 --quality 10 --quality-max 50 --lr 2e-4 --max-minutes 40 --val-fraction 0.02 --storage-path runs/release11/ray --run-name lowq"

# builtin:jpeg, second release - once builtin:jpeg-low takes qualities 10-50, builtin:auto sends this model
# the JPEGs of quality above 50 only (the usual camera and scanner files, with noise before compression or
# not), so it learns those alone: the first release's 15-minute continuation (ab-plain, above) fine-tuned
# for 35 minutes on qualities 50-95, noise of σ 5-30 before compression on half of the images, lr 2e-4 with
# cosine decay, bf16 (69 epochs, at cef63ac; the run wrote to runs/release11/jpeg-high, a folder renamed
# before packaging). CBSD68 told each file's quality: q60/75/90 +0.87/+0.77/+1.04 dB (first release:
# +0.84/+0.70/+0.77).
release runs/release11 jpeg ../shared/data/cbsd68 \
    ".venv/bin/raeae train --data ../shared/data/cbsd432 --output runs/release11/jpeg --channels 3 --color opponent --init runs/release10/ab-plain --noise jpeg --sigma 5 --sigma-max 30 --quality 50 --quality-max 95 --lr 2e-4 --max-minutes 35 --val-fraction 0.02 --storage-path runs/release11/ray --run-name jpeg-high"
