"""Job: the corpus stage. spark-submit jobs/corpus.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("corpus"))
