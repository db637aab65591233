"""Job: seed source files -> bronze.seeds (+ quarantine.seeds). spark-submit jobs/ingest.py --profile P"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("ingest"))
