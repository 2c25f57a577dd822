"""The extractor a user would write first: the baseline bench/extract.py compares lstmpipe with.

Deliberately plain, and independent of lstmpipe: for each video in turn, ffmpeg
decodes every sampled frame at full resolution (raw RGB on a pipe) into memory;
then each frame goes alone through PIL + torchvision transforms (shorter side to
224, center crop, normalise) and a torchvision resnet18 without its head (seeded
random init, fp32, batch 1, eval, no_grad); one .npy per video. Prints one JSON
line: frames, seconds and frames/s counted from after the imports (model build
included), and the import time apart.

    .venv/bin/python bench/naive.py VIDEO... --out DIR [--fps 8 | --num-frames N] [--size 224]
"""

import time

STARTED = time.perf_counter()  # before the heavy imports: their cost is reported apart

if __name__ == "__main__":
    # The extractor lives in naive_extract.py so that its imports, timed from here, stay at the
    # top of a module. bench/ is on sys.path: this file runs as a script.
    from naive_extract import main

    main(STARTED)
