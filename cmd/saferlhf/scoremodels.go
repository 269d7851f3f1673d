package main

func runTrainRM(args []string) error { return errNotYet("train-rm") }

func runTrainCM(args []string) error { return errNotYet("train-cm") }
