// llama-node-helper: two small tools for the e2e real node (e2e/cluster/node-up.sh, node-down.sh).
//
//	llama-node-helper device-plugin RESOURCE COUNT SOCKET-NAME
//	    a fake device plugin: registers RESOURCE (nvidia.com/gpu) with the kubelet over
//	    /var/lib/kubelet/device-plugins/kubelet.sock and advertises COUNT healthy devices; registers
//	    again whenever the kubelet restarts (it deletes our socket then).
//	llama-node-helper cri-reset ENDPOINT
//	    stops and removes every pod sandbox (and so every container) through the CRI API, like
//	    `crictl rmp -af`: the runtime tears down each pod's network and mounts.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
	dp "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000")+" "+format+"\n", a...)
}

func dial(endpoint string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+strings.TrimPrefix(endpoint, "unix://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
}

type plugin struct {
	dp.UnimplementedDevicePluginServer
	devs []*dp.Device
}

func (p *plugin) GetDevicePluginOptions(context.Context, *dp.Empty) (*dp.DevicePluginOptions, error) {
	return &dp.DevicePluginOptions{}, nil
}

func (p *plugin) ListAndWatch(_ *dp.Empty, s grpc.ServerStreamingServer[dp.ListAndWatchResponse]) error {
	if err := s.Send(&dp.ListAndWatchResponse{Devices: p.devs}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (p *plugin) Allocate(_ context.Context, r *dp.AllocateRequest) (*dp.AllocateResponse, error) {
	resp := &dp.AllocateResponse{}
	for _, c := range r.ContainerRequests {
		ids := strings.Join(c.DevicesIds, ",")
		logf("allocate %s", ids)
		resp.ContainerResponses = append(resp.ContainerResponses, &dp.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": ids, "LLAMA_E2E_FAKE_GPUS": ids},
		})
	}
	return resp, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *dp.PreferredAllocationRequest) (*dp.PreferredAllocationResponse, error) {
	return &dp.PreferredAllocationResponse{}, nil
}

func (p *plugin) PreStartContainer(context.Context, *dp.PreStartContainerRequest) (*dp.PreStartContainerResponse, error) {
	return &dp.PreStartContainerResponse{}, nil
}

func devicePlugin(resource string, count int, sockName string) {
	p := &plugin{}
	for i := 0; i < count; i++ {
		p.devs = append(p.devs, &dp.Device{ID: fmt.Sprintf("fake-gpu-%d", i), Health: dp.Healthy})
	}
	sock := filepath.Join(dp.DevicePluginPath, sockName)
	for {
		// Wait for the kubelet's registration socket.
		for {
			if _, err := os.Stat(dp.KubeletSocket); err == nil {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		_ = os.Remove(sock)
		lis, err := net.Listen("unix", sock)
		if err != nil {
			logf("listen %s: %v", sock, err)
			time.Sleep(time.Second)
			continue
		}
		srv := grpc.NewServer()
		dp.RegisterDevicePluginServer(srv, p)
		go func() { _ = srv.Serve(lis) }()
		if err := register(resource, sockName); err != nil {
			logf("register with the kubelet: %v", err)
			srv.Stop()
			time.Sleep(time.Second)
			continue
		}
		logf("registered %s x%d on %s", resource, count, sock)
		// The kubelet removes every socket in its device-plugin dir when it starts: register again then.
		for {
			time.Sleep(time.Second)
			if _, err := os.Stat(sock); err != nil {
				logf("%s is gone (kubelet restarted?): registering again", sock)
				break
			}
		}
		srv.Stop()
	}
}

func register(resource, sockName string) error {
	conn, err := dial(dp.KubeletSocket)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = dp.NewRegistrationClient(conn).Register(ctx, &dp.RegisterRequest{
		Version: dp.Version, Endpoint: sockName, ResourceName: resource,
		Options: &dp.DevicePluginOptions{},
	})
	return err
}

func criReset(endpoint string) int {
	conn, err := dial(endpoint)
	if err != nil {
		logf("dial %s: %v", endpoint, err)
		return 1
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	pods, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		logf("list pod sandboxes: %v", err)
		return 1
	}
	rc := 0
	for _, s := range pods.Items {
		name := s.Id[:12]
		if s.Metadata != nil {
			name = s.Metadata.Namespace + "/" + s.Metadata.Name
		}
		if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			logf("stop pod sandbox %s: %v", name, err)
			rc = 1
		}
		if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			logf("remove pod sandbox %s: %v", name, err)
			rc = 1
			continue
		}
		logf("removed pod %s", name)
	}
	// Containers without a sandbox should not exist; remove any that do.
	cs, err := rt.ListContainers(ctx, &cri.ListContainersRequest{})
	if err == nil {
		for _, c := range cs.Containers {
			_, _ = rt.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: c.Id, Timeout: 0})
			if _, err := rt.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: c.Id}); err != nil {
				logf("remove container %s: %v", c.Id[:12], err)
				rc = 1
			}
		}
	}
	return rc
}

func main() {
	if len(os.Args) >= 5 && os.Args[1] == "device-plugin" {
		n, err := strconv.Atoi(os.Args[3])
		if err != nil {
			logf("bad count %q", os.Args[3])
			os.Exit(2)
		}
		devicePlugin(os.Args[2], n, os.Args[4])
	}
	if len(os.Args) == 3 && os.Args[1] == "cri-reset" {
		os.Exit(criReset(os.Args[2]))
	}
	fmt.Fprintln(os.Stderr, "usage: llama-node-helper device-plugin RESOURCE COUNT SOCKET-NAME | cri-reset ENDPOINT")
	os.Exit(2)
}
