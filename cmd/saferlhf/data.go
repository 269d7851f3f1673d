package main

func runData(args []string) error { return errNotYet("data") }
