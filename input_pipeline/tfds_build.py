"""`tfds build`, runnable without apache-beam.

The `tfds` command line of tensorflow-datasets 4.9.10 imports all of its
commands at start-up, and one of them (convert_format) needs apache-beam,
whose releases pin protobuf < 7 and pillow < 13, older than this project's.
This runs TFDS's own `build` command by itself: same code, same flags.

  python -m input_pipeline.tfds_build input_pipeline/iam/tfds_builder.py --config=line \\
      --manual_dir=~/data/iam --data_dir=~/tensorflow_datasets
"""

import sys

from tensorflow_datasets.scripts.cli import build, cli_utils


def main(argv):
  args = cli_utils.make_flags_parser(build.Args, description="tfds build")(argv)
  args.execute()


if __name__ == "__main__":
  main(sys.argv)
