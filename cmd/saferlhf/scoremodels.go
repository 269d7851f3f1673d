package main

import "github.com/saferlhf/saferlhf/train/stages"

func runTrainRM(args []string) error { return runStage(stages.RM, args) }

func runTrainCM(args []string) error { return runStage(stages.CM, args) }
