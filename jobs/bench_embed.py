"""Job: the bench_embed stage. spark-submit jobs/bench_embed.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("bench_embed"))
