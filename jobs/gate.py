"""Job: the gate stage. spark-submit jobs/gate.py --profile P --run-id ID"""
import sys

from boostqa.jobs import main

if __name__ == "__main__":
    sys.exit(main("gate"))
