{{- define "stockmesh-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stockmesh-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stockmesh-operator.version" -}}
{{- default .Chart.AppVersion .Values.image.tag | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stockmesh-operator.selectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "stockmesh-operator.labels" -}}
app.kubernetes.io/name: stockmesh-operator
{{ include "stockmesh-operator.selectorLabels" . }}
app.kubernetes.io/part-of: stockmesh
app.kubernetes.io/version: {{ include "stockmesh-operator.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "stockmesh-operator.chart" . }}
{{- end -}}

{{- define "stockmesh-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "stockmesh-operator.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "stockmesh-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The namespaces to watch (watchNamespaces, plus the older single
watchNamespace), as a JSON list; empty: the whole cluster. */}}
{{- define "stockmesh-operator.watchNamespaces" -}}
{{- $list := .Values.watchNamespaces | default list -}}
{{- with .Values.watchNamespace }}{{- $list = append $list . -}}{{- end -}}
{{- $list | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* The leader-election Lease's name (leaderElection.leaseName, default the
full name). */}}
{{- define "stockmesh-operator.leaseName" -}}
{{- default (include "stockmesh-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}
