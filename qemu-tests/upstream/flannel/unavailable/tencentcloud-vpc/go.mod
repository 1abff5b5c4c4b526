// A stand-in for the Tencent Cloud VPC SDK, which the Go module proxy here does not
// serve (403 for every version). flanneld's main package links its tencent-vpc backend
// unconditionally; this module gives that backend the API it compiles against, and every
// call fails with an error saying so. The e2e cluster uses flannel's vxlan backend,
// which is upstream's code, unchanged. See ../../../VERSIONS.md.
module github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc

go 1.22
